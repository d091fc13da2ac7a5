"""Every GPU path, through the platform as a user runs it: one command, one table.

`trainyard up` starts with a node worker that registers the GPU; every job goes in over
HTTP. The checks, in the order of the table:

1. gpt2-small (124M), bf16, torch.compile, seq 1024, the largest micro-batch the memory
   estimate lets through (up to 64), a BPE trained here on a real corpus: tokens/s and MFU
   at steady state (steps after the first 20, at least 50 of them).
2. llama-1b under FSDP2 (one GPU: world size 1 runs the sharding code path over a group of
   one), activation checkpointing off and on: tokens/s, MFU, peak memory.
3. The memory estimate against torch.cuda.max_memory_allocated for those jobs.
4. Out of memory: another process holds most of the GPU, so a job the estimate lets
   through cannot fit; it must fail with `out_of_memory`, its micro-batch and a hint, and
   the next job must run at once on the same node.
5. Exact resume: SIGTERM to a running trainer, the platform resumes it from the
   checkpoint taken then; its losses after that step against an uninterrupted run (both
   with `training.deterministic`, and the steps before the resume compared too).
6. A LoRA SFT job on the model of check 1, then chat generation over the API on the GPU
   with the KV cache: generated tokens per second.
7. Export: the model of check 1 loads in `transformers` on the GPU; its logits against
   trainyard's own model.

A check that fails prints why and the script goes on. `--smoke` runs the same script on
CPU with tiny sizes (the test suite does), so a typo never costs GPU minutes.

    python bench/gpu.py [--smoke] [--corpus PATH] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.results import replace_section  # noqa: E402
from trainer.config import ModelConfig, TrainingConfig  # noqa: E402
from trainer.sizing import estimate_memory  # noqa: E402
from trainyard import corpus as corpora  # noqa: E402
from trainyard.client import Client  # noqa: E402
from trainyard.demo import local_platform  # noqa: E402

MARK_BEGIN, MARK_END = "<!-- gpu.py:begin -->", "<!-- gpu.py:end -->"
GIB = 1024**3


@dataclass
class Sizes:
    """Everything that differs between a GPU run and the CPU smoke run."""

    accelerator: str
    gpt2_preset: str
    llama_preset: str
    vocab: int
    seq_len: int
    gpt2_steps: int
    skip_steps: int  # compile and warm-up: left out of steady-state figures
    llama_seq_len: int
    llama_micro_batch: int
    llama_steps: int
    llama_skip: int
    compile: bool
    precision: str
    resume_steps: int
    resume_at: int
    sft_steps: int
    gen_tokens: int
    timeout: float

    @classmethod
    def for_run(cls, smoke: bool) -> Sizes:
        if smoke:
            return cls(
                accelerator="cpu",
                gpt2_preset="tiny",
                llama_preset="tiny-llama",
                vocab=512,
                seq_len=64,
                gpt2_steps=8,
                skip_steps=2,
                llama_seq_len=64,
                llama_micro_batch=2,
                llama_steps=4,
                llama_skip=1,
                compile=False,
                precision="auto",
                resume_steps=150,
                resume_at=20,
                sft_steps=10,
                gen_tokens=16,
                timeout=480.0,
            )
        return cls(
            accelerator="gpu",
            gpt2_preset="gpt2-small",
            llama_preset="llama-1b",
            vocab=50304,
            seq_len=1024,
            gpt2_steps=80,
            skip_steps=20,
            llama_seq_len=1024,
            llama_micro_batch=8,
            llama_steps=30,
            llama_skip=10,
            compile=True,
            precision="bf16",
            resume_steps=1000,
            resume_at=150,
            sft_steps=60,
            gen_tokens=256,
            timeout=420.0,
        )


@dataclass
class Row:
    check: str
    result: str
    detail: str = ""
    ok: bool | None = None  # None: a measurement with no pass/fail


@dataclass
class Run:
    client: Client
    sizes: Sizes
    workdir: Path
    smoke: bool
    dataset_id: str = ""
    rows: dict[str, list[Row]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, row: Row) -> None:
        self.rows.setdefault(key, []).append(row)
        mark = {True: "ok", False: "FAIL", None: "--"}[row.ok]
        print(f"[{mark}] {row.check}: {row.result} {row.detail}", flush=True)


# ---------------------------------------------------------------------------- helpers


def gpu_memory() -> int:
    return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else 0


def versions() -> dict[str, str]:
    """Card, driver, CUDA, torch and NCCL of this machine."""
    out = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        out["card"] = torch.cuda.get_device_name(0)
        out["cuda"] = str(torch.version.cuda)
        out["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
    else:
        out["card"] = "none (CPU)"
    return out


def series(client: Client, job_id: str, name: str) -> dict[int, float]:
    """A metric by step; a step recorded twice (a resumed attempt) keeps its last value."""
    return {p["step"]: p["value"] for p in client.metrics(job_id).get(name, [])}


def wait(run: Run, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """The job when it ends; raises with its error when it did not succeed."""
    done = run.client.wait_job(job["id"], timeout=timeout or run.sizes.timeout)
    if done["status"] != "succeeded":
        raise RuntimeError(f"job {done['id']} ended {done['status']}: {done['error']}")
    return done


def pretrain_spec(run: Run, name: str, preset: str, training: dict[str, Any], **res: Any) -> dict:
    s = run.sizes
    return {
        "name": name,
        "dataset_id": run.dataset_id,
        "tokenizer": {"type": "bpe", "vocab_size": s.vocab},
        "model": {"preset": preset},
        "training": {
            "lr": 6e-4,
            "warmup_steps": min(10, training["max_steps"] // 4),
            "eval_batches": 2,
            "precision": s.precision,
            **training,
        },
        "resources": {"accelerator": s.accelerator, "processes_per_node": 1, **res},
    }


def estimate_for(job: dict[str, Any]) -> dict[str, int]:
    """The platform's memory estimate for a job, from its resolved spec."""
    spec = job["spec"]
    model = {k: v for k, v in spec["model"].items() if k not in ("preset", "base_model_id")}
    model = {k: v for k, v in model.items() if v is not None}
    training = spec["training"]
    cfg = ModelConfig(
        **model,
        vocab_size=spec["tokenizer"]["vocab_size"],
        seq_len=training["seq_len"],
        dropout=training["dropout"],
    )
    res = spec["resources"]
    return estimate_memory(
        cfg, TrainingConfig(**training), res["processes_per_node"], res["strategy"], "gpu"
    )


def steady(run: Run, job_id: str, skip: int) -> dict[str, float | None]:
    """Median tokens/s and MFU over the steps after `skip`, and the peak memory."""
    tps = series(run.client, job_id, "tokens_per_s")
    mfu = series(run.client, job_id, "mfu")
    peak = series(run.client, job_id, "peak_memory_bytes")
    steps = [k for k in sorted(tps) if k > skip]
    return {
        "steps": len(steps),
        "tokens_per_s": statistics.median(tps[k] for k in steps) if steps else None,
        "mfu": statistics.median(mfu[k] for k in steps if k in mfu) if mfu else None,
        "peak": max(peak.values()) if peak else None,
    }


def fmt_mfu(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1%}"


def trainer_pids(job_id: str) -> list[int]:
    """Trainer processes (not their torchrun agent) of a job, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                text = b" ".join(argv).decode(errors="replace")
                if "trainer.train" in text and job_id in text and "torch.distributed" not in text:
                    out.append(int(entry.name))
    return out


# ---------------------------------------------------------------------------- checks


def check_gpt2(run: Run) -> None:
    s = run.sizes
    micro = 4
    if not run.smoke:
        # The largest micro-batch (up to 64) whose estimate fits 90% of the card.
        for mb in (64, 48, 32, 24, 16, 8, 4):
            cfg = ModelConfig("gpt2", 12, 12, 768, vocab_size=s.vocab, seq_len=s.seq_len)
            tc = TrainingConfig(seq_len=s.seq_len, batch_size=mb, micro_batch_size=mb)
            if estimate_memory(cfg, tc, 1, "ddp", "gpu")["total"] <= 0.9 * gpu_memory():
                micro = mb
                break
    training = {
        "max_steps": s.gpt2_steps,
        "seq_len": s.seq_len,
        "batch_size": micro,
        "micro_batch_size": micro,
        "compile": s.compile,
        "eval_interval": s.gpt2_steps,
        "checkpoint_interval": s.gpt2_steps,
    }
    job = run.client.create_job(pretrain_spec(run, "gpu-gpt2-small", s.gpt2_preset, training))
    done = wait(run, job)
    got = steady(run, job["id"], s.skip_steps)
    run.facts["gpt2"] = {"job": done, "steady": got, "estimate": estimate_for(done)}
    mfu = got["mfu"]
    ok = None if mfu is None else mfu >= 0.5
    run.add(
        "1",
        Row(
            f"{s.gpt2_preset} ({done['params'] / 1e6:.0f}M), {s.precision}, compile={s.compile},"
            f" seq {s.seq_len}, micro-batch {micro}",
            f"{got['tokens_per_s']:,.0f} tokens/s, MFU {fmt_mfu(mfu)}",
            f"median of {got['steps']} steps after step {s.skip_steps}; goal MFU >= 50%; "
            f"val_loss {done['progress']['val_loss']:.3f} after {s.gpt2_steps} steps",
            ok,
        ),
    )


def check_llama(run: Run) -> None:
    s = run.sizes
    for ckpt in (False, True):
        training = {
            "max_steps": s.llama_steps,
            "seq_len": s.llama_seq_len,
            "batch_size": s.llama_micro_batch,
            "micro_batch_size": s.llama_micro_batch,
            "compile": s.compile,
            "activation_checkpointing": ckpt,
            "eval_interval": s.llama_steps,
            "checkpoint_interval": s.llama_steps,
        }
        spec = pretrain_spec(run, f"gpu-llama-ckpt-{ckpt}", s.llama_preset, training)
        spec["resources"]["strategy"] = "fsdp"
        try:
            job = run.client.create_job(spec)
            done = wait(run, job)
        except Exception as e:  # one setting failing must not hide the other
            run.add(
                "2", Row(f"{s.llama_preset} FSDP2, checkpointing {ckpt}", "failed", str(e), False)
            )
            continue
        got = steady(run, job["id"], s.llama_skip)
        events = run.client.events(job["id"], limit=1000)["data"]
        start = next((e["data"] for e in events if e["type"] == "start"), {})
        run.facts[f"llama-{ckpt}"] = {"job": done, "steady": got, "estimate": estimate_for(done)}
        peak = got["peak"] or 0
        run.add(
            "2",
            Row(
                f"{s.llama_preset} ({done['params'] / 1e9:.2f}B) FSDP2 world size 1, "
                f"activation checkpointing {'on' if ckpt else 'off'}, seq {s.llama_seq_len}, "
                f"micro-batch {s.llama_micro_batch}",
                f"{got['tokens_per_s']:,.0f} tokens/s, MFU {fmt_mfu(got['mfu'])}, "
                f"peak {peak / GIB:.1f} GiB",
                f"median of {got['steps']} steps after step {s.llama_skip}; "
                f"sharded: {start.get('sharded')}",
                start.get("sharded") is True,
            ),
        )


def check_estimates(run: Run) -> None:
    found = False
    s = run.sizes
    for key, label in (("gpt2", s.gpt2_preset), ("llama-False", s.llama_preset),
                       ("llama-True", f"{s.llama_preset}, checkpointing")):  # fmt: skip
        fact = run.facts.get(key)
        if not fact:
            continue
        found = True
        est, peak = fact["estimate"], fact["steady"]["peak"]
        # max_memory_allocated counts tensors only: compare without the context allowance.
        tensors = est["total"] - est["overhead"]
        if not torch.cuda.is_available() or not peak:
            run.add("3", Row(label, f"estimate {tensors / GIB:.2f} GiB", "no GPU to compare"))
            continue
        ratio = tensors / peak
        run.add(
            "3",
            Row(
                label,
                f"estimate {tensors / GIB:.1f} GiB vs max_memory_allocated {peak / GIB:.1f} GiB",
                f"estimate / actual = {ratio:.2f}",
                abs(ratio - 1) <= 0.2,
            ),
        )
    if not found:
        raise RuntimeError("no job of checks 1 and 2 finished to compare")


def check_oom(run: Run) -> None:
    s = run.sizes
    if not torch.cuda.is_available():
        run.add("4", Row("out of memory", "skipped", "needs a GPU"))
        return
    # gpt2-small at a micro-batch the estimate puts near 30 GiB; then fill the card so that
    # only about 8 GiB stay free for it.
    micro = 16
    training = {
        "max_steps": 5,
        "seq_len": s.seq_len,
        "batch_size": micro,
        "micro_batch_size": micro,
        "eval_interval": 5,
        "checkpoint_interval": 5,
    }
    spec = pretrain_spec(run, "gpu-oom", s.gpt2_preset, training)
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - 8 * GIB), dtype=torch.uint8, device="cuda")
    try:
        job = run.client.create_job(spec)  # the platform sees the whole card: it is accepted
        done = run.client.wait_job(job["id"], timeout=s.timeout)
    finally:
        del hog
        torch.cuda.empty_cache()
    err = done.get("error") or {}
    msg = err.get("message") or ""
    ok = done["status"] == "failed" and err.get("code") == "out_of_memory" and str(micro) in msg
    run.add(
        "4",
        Row(
            f"gpt2-small micro-batch {micro} with 8 GiB free (estimate "
            f"{estimate_for(done)['total'] / GIB:.1f} GiB)",
            f"{done['status']}, {err.get('code')}",
            repr(msg),
            ok,
        ),
    )
    t0 = time.monotonic()
    spec["training"].update(batch_size=8, micro_batch_size=8)
    spec["name"] = "gpu-after-oom"
    nxt = run.client.create_job(spec)
    after = run.client.wait_job(nxt["id"], timeout=s.timeout)
    run.add(
        "4",
        Row(
            "the next job on the same node",
            after["status"],
            f"submitted right after, ended in {time.monotonic() - t0:.0f}s",
            after["status"] == "succeeded",
        ),
    )


def check_resume(run: Run) -> None:
    s = run.sizes
    training = {
        "max_steps": s.resume_steps,
        "seq_len": 256 if not run.smoke else 64,
        "batch_size": 16,
        "micro_batch_size": 16,
        "eval_interval": s.resume_steps,
        "checkpoint_interval": s.resume_steps,
        "lr": 1e-3,
        # Compiled runs sum some gradients with atomic adds and part in the last bits (runs
        # C and D); bit-exactness is asked of deterministic kernels.
        "deterministic": True,
    }
    model = {"preset": "shakespeare"} if not run.smoke else {"preset": "tiny"}
    specs = []
    for name in ("gpu-resume-straight", "gpu-resume-stopped"):
        spec = pretrain_spec(run, name, "tiny", training)
        spec["model"] = model
        specs.append(spec)
    straight = wait(run, run.client.create_job(specs[0]))
    stopped = run.client.create_job(specs[1])
    deadline = time.monotonic() + s.timeout
    signalled = None
    while time.monotonic() < deadline and signalled is None:
        job = run.client.job(stopped["id"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        if job["progress"]["step"] >= s.resume_at:
            for pid in trainer_pids(stopped["id"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    signalled = job["progress"]["step"]
        time.sleep(0.05)
    if signalled is None:
        raise RuntimeError(f"never saw job {stopped['id']} running past step {s.resume_at}")
    done = wait(run, stopped)
    events = run.client.events(done["id"], limit=1000)["data"]
    preempted = [e for e in events if e["type"] == "preempted" or "preempt" in str(e["message"])]
    resumed_at = next(
        (
            int(e["data"]["step"])
            for e in events
            if e["type"] == "preempted" and "step" in e["data"]
        ),
        None,
    )
    a = series(run.client, straight["id"], "loss")
    b = series(run.client, done["id"], "loss")
    after = [k for k in sorted(b) if resumed_at is not None and k > resumed_at]
    diffs = [abs(a[k] - b[k]) for k in after if k in a]
    worst = max(diffs) if diffs else math.nan
    exact = bool(diffs) and worst == 0.0
    # Where the two runs part: a state restored wrongly differs at once and by much; kernels
    # that round differently differ first in the last bits and grow from there.
    parted = next((k for k in after if k in a and a[k] != b[k]), None)
    first = (
        ""
        if parted is None
        else f"; first differs at step {parted} by {abs(a[parted] - b[parted]):.1e}"
    )
    # The same comparison before the signal: two runs that part there are not reproducible
    # on this GPU at all, whatever the resume does.
    before = [k for k in sorted(b) if resumed_at is not None and k <= resumed_at and k in a]
    early = next((k for k in before if a[k] != b[k]), None)
    first += (
        f"; before the resume equal at all {len(before)} steps"
        if early is None
        else f"; before the resume first differs at step {early} by {abs(a[early] - b[early]):.1e}"
    )
    run.add(
        "5",
        Row(
            f"SIGTERM at step ~{signalled}, attempt {done['attempt']}, resumed from step "
            f"{resumed_at}",
            "bit-exact" if exact else f"max |loss difference| {worst:.2e}",
            f"over {len(diffs)} steps after the resume; {len(preempted)} preemption events" + first,
            bool(diffs) and done["attempt"] >= 2 and worst <= 1e-3,
        ),
    )


def check_sft(run: Run) -> None:
    s = run.sizes
    base = run.facts.get("gpt2", {}).get("job")
    if base is None:
        raise RuntimeError("check 1 made no model to fine-tune")
    path = run.workdir / "reverse.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in corpora.reversal_task(2000, seed=3)))
    ds = run.client.wait_dataset(run.client.upload_dataset(path, name="gpu-sft")["id"])
    spec = {
        "name": "gpu-lora",
        "type": "sft",
        "dataset_id": ds["id"],
        "model": {"base_model_id": base["model_id"]},
        "sft": {"method": "lora", "eval_prompts": 2},
        "training": {
            "max_steps": s.sft_steps,
            "batch_size": 16,
            "seq_len": 256 if not run.smoke else 64,
            "eval_interval": s.sft_steps,
            "checkpoint_interval": s.sft_steps,
            "precision": s.precision,
        },
        "resources": {"accelerator": s.accelerator, "processes_per_node": 1},
    }
    done = wait(run, run.client.create_job(spec))
    tps = series(run.client, done["id"], "tokens_per_s")
    run.add(
        "6",
        Row(
            f"LoRA SFT of the gpt2-small model, {s.sft_steps} steps",
            f"{done['status']}, loss {done['progress']['loss']:.3f}",
            f"median {statistics.median(tps.values()):,.0f} tokens/s" if tps else "",
            True,
        ),
    )
    device = "GPU" if torch.cuda.is_available() else "CPU"
    chat_body = {
        "messages": [{"role": "user", "content": "Reverse: garden"}],
        "max_new_tokens": s.gen_tokens,
        "temperature": 1.0,
    }
    # The base model rarely ends a plain prompt early: its figure is decoding speed.
    base_body = {"prompt": "ROMEO:", "max_new_tokens": s.gen_tokens, "temperature": 1.0}
    for label, model_id, body in (
        ("chat model", done["model_id"], chat_body),
        ("base model", base["model_id"], base_body),
    ):
        url = f"/v1/models/{model_id}/generate"
        run.client.request("POST", url, json=body)  # loads the model
        tokens, seconds = 0, 0.0
        for seed in range(5):
            t0 = time.perf_counter()
            out = run.client.request("POST", url, json={**body, "seed": seed})
            seconds += time.perf_counter() - t0
            tokens += out["usage"]["completion_tokens"]
        run.add(
            "6",
            Row(
                f"generation over the API on the {device}, KV cache, {label}",
                f"{tokens / seconds:,.0f} tokens/s",
                f"{tokens} tokens in 5 requests (one at a time, HTTP included)",
                tokens > 0,
            ),
        )


def check_export(run: Run) -> None:
    from transformers import AutoModelForCausalLM

    from trainer.sample import load_model

    base = run.facts.get("gpt2", {}).get("job")
    if base is None:
        raise RuntimeError("check 1 made no model to export")
    folder = run.workdir / "export"
    folder.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        run.client.download(base["model_id"], name, folder / name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ours = load_model(str(folder), device=device)
    theirs = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device)
    theirs.eval()
    g = torch.Generator().manual_seed(0)
    length = min(128, ours.config.seq_len)
    idx = torch.randint(0, ours.config.vocab_size, (2, length), generator=g).to(device)
    with torch.no_grad():
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                a = ours.model(idx)[0].float()
                b = theirs(idx).logits.float()
            results[dtype] = ((a - b).abs().max().item(), b.abs().max().item())
    f32, bf16 = results[torch.float32], results[torch.bfloat16]
    run.add(
        "7",
        Row(
            f"export loads in transformers ({type(theirs).__name__}) on {device}",
            f"max |logit diff| fp32 {f32[0]:.1e}, bf16 autocast {bf16[0]:.1e}",
            f"largest |logit| {f32[1]:.1f}; bound: 1e-3 fp32, 5% of the largest logit in bf16",
            f32[0] <= 1e-3 and bf16[0] <= 0.05 * bf16[1],
        ),
    )


CHECKS: list[tuple[str, str, Callable[[Run], None]]] = [
    # (key, what, check) in the order they run: cheap and dependent checks first, the
    # heaviest (llama-1b) last, so a short budget loses the least.
    ("1", "gpt2-small throughput and MFU", check_gpt2),
    ("7", "export into transformers", check_export),
    ("6", "LoRA SFT and generation", check_sft),
    ("5", "exact resume after SIGTERM", check_resume),
    ("4", "out-of-memory path", check_oom),
    ("2", "llama-1b FSDP2", check_llama),
    ("3", "memory estimate vs actual", check_estimates),
]


# ---------------------------------------------------------------------------- report


def table(run: Run, info: dict[str, str], elapsed: float) -> str:
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {elapsed:.0f}s"
        + (" (--smoke: tiny sizes on CPU)" if run.smoke else ""),
        "",
        "Card: {card}; driver {d}; CUDA {c}; torch {t}; NCCL {n}; Python {p}".format(
            card=info.get("card"),
            d=info.get("driver", "-"),
            c=info.get("cuda", "-"),
            t=info["torch"],
            n=info.get("nccl", "-"),
            p=info["python"],
        ),
        "",
        "| # | check | result | detail | pass |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(run.rows):
        for row in run.rows[key]:
            mark = {True: "yes", False: "**no**", None: ""}[row.ok]
            cells = [key, row.check, row.result, row.detail, mark]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def platform(workdir: Path) -> Iterator[Client]:
    with (
        local_platform(workdir / "data", workdir / "platform.log") as (url, key),
        Client(url, key, timeout=600) as client,
    ):
        yield client


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--corpus", type=Path, help="a text corpus (default: tinyshakespeare)")
    ap.add_argument("--results", type=Path, help="RESULTS.md to write the table into")
    ap.add_argument("--only", help="comma-separated check numbers to run (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument(
        "--deadline", type=float, default=420.0, help="start no check after this many seconds"
    )
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke on CPU", file=sys.stderr)
        return 2
    sizes = Sizes.for_run(args.smoke)
    source = args.corpus
    if source is None:
        for candidate in (ROOT / ".gpudata", ROOT.parent / "shared" / "data"):
            if (candidate / "tinyshakespeare.txt").exists():
                source = candidate / "tinyshakespeare.txt"
                break
    workdir = Path(tempfile.mkdtemp(prefix="trainyard-gpu-"))
    if source is None:  # no real corpus at hand (the smoke run in the tests): generate one
        source = corpora.write(workdir / "corpus.txt", target_bytes=200_000)
    info = versions()
    print(f"bench/gpu.py on {info['card']}, torch {info['torch']}; work in {workdir}", flush=True)
    started = time.monotonic()
    only = set(args.only.split(",")) if args.only else None
    try:
        with platform(workdir) as client:
            run = Run(client, sizes, workdir, args.smoke)
            ds = client.wait_dataset(client.upload_dataset(source, name=source.name)["id"])
            if ds["status"] != "ready":
                raise RuntimeError(f"corpus upload: {ds['status']}: {ds.get('errors')}")
            run.dataset_id = ds["id"]
            for key, what, check in CHECKS:
                if only is not None and key not in only:
                    continue
                if time.monotonic() - started > args.deadline:
                    run.add(key, Row(what, "skipped", f"past the {args.deadline:.0f}s deadline"))
                    continue
                t0 = time.monotonic()
                print(f"--- {key}. {what}", flush=True)
                try:
                    check(run)
                except Exception as e:
                    traceback.print_exc()
                    run.add(key, Row(what, "failed", f"{type(e).__name__}: {e}"[:300], False))
                print(f"    ({time.monotonic() - t0:.0f}s)", flush=True)
    except Exception:
        traceback.print_exc()
        log = workdir / "platform.log"
        if log.exists():
            print(log.read_text()[-4000:], file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = table(run, info, time.monotonic() - started)
    print("\n" + text)
    if args.results:
        replace_section(args.results, text, MARK_BEGIN, MARK_END, "## GPU paths (`bench/gpu.py`)")
    failed = sum(1 for rows in run.rows.values() for r in rows if r.ok is False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
