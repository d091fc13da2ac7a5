"""Chat template: rendering, its Jinja twin, the loss mask and adding chat tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.trainer_testkit import corpus
from trainer import chat
from trainer import tokenizer as tokmod

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    [
        {"role": "system", "content": "Be brief.\nVery brief."},
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": " The Nile. "},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Danube ✓"},
    ],
    [{"role": "user", "content": ""}],
]


def _chat_byte_tokenizer() -> tokmod.Tokenizer:
    tok = tokmod.byte_tokenizer()
    assert chat.ensure_chat_tokens(tok) == [tokmod.IM_START, tokmod.IM_END]
    return tok


def test_render_is_chatml() -> None:
    text = chat.render(CONVERSATIONS[0], add_generation_prompt=False)
    assert text == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = chat.render(CONVERSATIONS[0][:1], add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_completion_records_become_messages() -> None:
    record = {"prompt": "2+2=", "completion": "4"}
    assert chat.to_messages(record) == [
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "4"},
    ]
    assert chat.to_messages({"messages": CONVERSATIONS[1]}) == CONVERSATIONS[1]


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_jinja_template_renders_like_render(messages: list, generation_prompt: bool) -> None:
    sandbox = pytest.importorskip("jinja2.sandbox")
    # transformers compiles chat templates this way (sandboxed, trim and lstrip blocks).
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    out = env.from_string(chat.CHAT_TEMPLATE).render(
        messages=messages,
        add_generation_prompt=generation_prompt,
        bos_token=tokmod.EOT,
        eos_token=tokmod.IM_END,
    )
    assert out == chat.render(messages, add_generation_prompt=generation_prompt)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_transformers_apply_chat_template(tmp_path: Path, messages: list) -> None:
    transformers = pytest.importorskip("transformers")
    path = tmp_path / "tokenizer.json"
    _chat_byte_tokenizer().save(str(path))
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), chat_template=chat.CHAT_TEMPLATE, eos_token=tokmod.IM_END
    )
    for generation_prompt in (False, True):
        text = hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        assert text == chat.render(messages, add_generation_prompt=generation_prompt)


def test_loss_mask_covers_assistant_content_and_its_end_token() -> None:
    tok = _chat_byte_tokenizer()
    start, end = tok.token_to_id(tokmod.IM_START), tok.token_to_id(tokmod.IM_END)
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ok!"},
    ]
    ids, mask = chat.tokenize_example(tok, messages)

    def block(role: str, content: str, learn: bool) -> tuple[list[int], list[int]]:
        head = [start, *f"{role}\n".encode()]
        body = [*content.encode(), end]
        return [*head, *body, 10], [0] * len(head) + [int(learn)] * len(body) + [0]

    want_ids: list[int] = []
    want_mask: list[int] = []
    for m in messages:
        i, k = block(m["role"], m["content"], m["role"] == "assistant")
        want_ids += i
        want_mask += k
    assert ids == want_ids
    assert mask == want_mask
    learned = [t for t, k in zip(ids, mask, strict=True) if k]
    assert learned == [*b"yo", end, *b"ok!", end]


def test_pieces_encode_like_the_rendered_string() -> None:
    for tok in (_chat_byte_tokenizer(), tokmod.train_bpe(corpus(100), vocab_size=400)):
        assert chat.ensure_chat_tokens(tok) == []
        for messages in CONVERSATIONS:
            ids, mask = chat.tokenize_example(tok, messages)
            assert ids == tok.encode(chat.render(messages)).ids
            assert len(mask) == len(ids)
            assert tok.decode(ids, skip_special_tokens=False) == chat.render(messages)


def test_ensure_chat_tokens_adds_only_missing_ones() -> None:
    tok = tokmod.byte_tokenizer()
    assert chat.ensure_chat_tokens(tok) == [tokmod.IM_START, tokmod.IM_END]
    assert tok.token_to_id(tokmod.IM_START) == 257 and tok.token_to_id(tokmod.IM_END) == 258
    assert tokmod.vocab_size(tok) == 259
    assert chat.ensure_chat_tokens(tok) == []
    assert chat.stop_ids(tok) == [258, 256]
    with pytest.raises(ValueError, match="ensure_chat_tokens"):
        chat.tokenize_example(tokmod.byte_tokenizer(), CONVERSATIONS[0])
