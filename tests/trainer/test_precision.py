"""Precision "auto": bf16 where the device multiplies it natively, fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.trainer_testkit import make_dataset, read_events, run_config, run_in_process
from trainer.config import EXIT_OK
from trainer.parallel import computes_in_bf16

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return make_dataset(tmp_path_factory.mktemp("data"))


def first_steps(tmp: Path, dataset: tuple[str, dict[str, Any]], precision: str) -> list[dict]:
    """The start event and the first two step events of a tiny run at this precision."""
    tok, data = dataset
    raw = run_config(tmp / precision, precision, tok, data, max_steps=2, precision=precision)
    assert run_in_process(raw) == EXIT_OK
    events = read_events(raw["output_dir"])
    return [e for e in events if e["type"] in ("start", "step")][:3]


def test_auto_on_this_cpu_is_the_precision_its_processor_multiplies(
    tmp_path: Path, dataset: tuple[str, dict[str, Any]]
) -> None:
    """An auto run computes exactly as the bf16 run does on a processor with native bf16,
    exactly as the fp32 run does on one without; its start event says which."""
    runs = {p: first_steps(tmp_path, dataset, p) for p in ("auto", "bf16", "fp32")}
    expected = "bf16" if computes_in_bf16("auto", CPU) else "fp32"
    assert [r[0]["precision"] for r in runs.values()] == [expected, "bf16", "fp32"]
    losses = {p: [e["loss"] for e in r[1:]] for p, r in runs.items()}
    assert losses["bf16"] != losses["fp32"]  # the two precisions are told apart
    assert losses["auto"] == losses[expected]


@pytest.mark.parametrize(
    ("avx512_bf16", "amx_bf16"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_auto_follows_the_processors_bf16_support(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx_bf16: bool
) -> None:
    """Processors this machine is not: auto is bf16 with AVX512-BF16 or AMX-BF16 (either),
    fp32 with neither; a precision the spec names is kept on any processor."""
    capabilities = {"avx2": True, "avx512_bf16": avx512_bf16, "amx_bf16": amx_bf16}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
    assert computes_in_bf16("auto", CPU) is (avx512_bf16 or amx_bf16)
    assert computes_in_bf16("fp32", CPU) is False
    assert computes_in_bf16("bf16", CPU) is True
