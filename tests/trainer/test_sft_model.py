"""Token-level SFT checks: which positions carry loss, and packing that never leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer import chat
from trainer import tokenizer as tokmod
from trainer.config import ModelConfig
from trainer.model import IGNORE_INDEX, CausalLM, build_model
from trainer.sft_data import SFTExamples, build_rows
from trainer.sft_shards import write_sft_shards

CFGS = {
    "gpt2": ModelConfig(arch="gpt2", n_layer=2, n_head=2, d_model=32, vocab_size=259, seq_len=128),
    "llama": ModelConfig(
        arch="llama", n_layer=2, n_head=4, d_model=32, vocab_size=259, seq_len=128, n_kv_head=2
    ),
}
CHAT_1 = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi!"},
]
CHAT_2 = [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "green"}]


@pytest.fixture
def examples(tmp_path: Path) -> SFTExamples:
    tok_path = tmp_path / "byte.json"
    tokmod.byte_tokenizer().save(str(tok_path))
    records = [{"messages": CHAT_1}, {"messages": CHAT_2}, {"prompt": "Say hi", "completion": "hi"}]
    write_sft_shards(records, str(tok_path), str(tmp_path / "s"), seq_len=128)
    return SFTExamples(str(tmp_path / "s"), 128, "train")


def _model(arch: str) -> CausalLM:
    torch.manual_seed(0)
    return build_model(CFGS[arch]).eval()


def test_loss_positions_are_the_assistant_tokens(examples: SFTExamples) -> None:
    batch = build_rows(examples, [[0]], 128)
    ids = batch.input_ids[0].tolist()
    targets = {i for i, y in enumerate(batch.labels[0].tolist()) if y != IGNORE_INDEX}
    # The answer "Hi!" and its <|im_end|> follow the last "<|im_start|>assistant\n" header.
    tok = tokmod.byte_tokenizer()
    chat.ensure_chat_tokens(tok)
    prompt_len = len(tok.encode(chat.render(CHAT_1[:2], add_generation_prompt=True)).ids)
    answer = [*b"Hi!", 258]
    assert ids[prompt_len : prompt_len + 4] == answer
    assert targets == set(range(prompt_len - 1, prompt_len + 3))  # position t predicts t+1
    assert [batch.labels[0, t].item() for t in sorted(targets)] == answer

    model = _model("llama")
    logits, loss = model(batch.input_ids, batch.labels)
    assert loss is not None
    idx = sorted(targets)
    manual = F.cross_entropy(logits[0, idx].float(), batch.labels[0, idx])
    assert torch.allclose(loss, manual, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_example_matches_it_alone(examples: SFTExamples, arch: str) -> None:
    model = _model(arch)
    n0, n1 = (int(n) for n in examples.lengths[:2])
    packed = build_rows(examples, [[0, 1]], 128)
    alone = build_rows(examples, [[1]], 128)
    with torch.no_grad():
        logits_packed, _ = model(
            packed.input_ids, position_ids=packed.position_ids, doc_ids=packed.doc_ids
        )
        logits_alone, _ = model(alone.input_ids[:, :n1])  # plain causal, positions 0..n1-1
    diff = (logits_packed[0, n0 : n0 + n1] - logits_alone[0]).abs().max()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_first_example_cannot_reach_the_second(examples: SFTExamples, arch: str) -> None:
    model = _model(arch)
    n0, n1 = (int(n) for n in examples.lengths[:2])
    packed = build_rows(examples, [[0, 1]], 128)
    changed = packed.input_ids.clone()
    changed[0, 1 : n0 - 1] = torch.randint(0, 256, (n0 - 2,))
    with torch.no_grad():
        a, _ = model(packed.input_ids, position_ids=packed.position_ids, doc_ids=packed.doc_ids)
        b, _ = model(changed, position_ids=packed.position_ids, doc_ids=packed.doc_ids)
    assert not torch.allclose(a[0, :n0], b[0, :n0])
    assert torch.allclose(a[0, n0 : n0 + n1], b[0, n0 : n0 + n1], atol=1e-6)
