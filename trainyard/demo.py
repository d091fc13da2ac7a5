"""`trainyard demo`: start the platform, then train a model through its HTTP API.

Everything a user would do, in order: create a key, upload a corpus, submit a pretraining
job on two processes, watch it, and sample from the trained model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from trainyard import corpus
from trainyard.client import Client
from trainyard.console import output
from trainyard.console.datasets import report
from trainyard.console.jobs import follow
from trainyard.net import free_port
from trainyard.results import Job
from trainyard.settings import get_settings


def _wait_ready(url: str, up: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError("trainyard up exited early")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the platform did not become ready")


def _watch(client: Client, job_id: str) -> Job:
    """The live view `trainyard jobs watch` draws, then the job as it ended."""
    follow(client, job_id, as_json=False, interval=0.5)
    return client.jobs.get(job_id)


def run(url: str, key: str, workdir: Path, steps: int, processes: int) -> int:
    """Drive the whole flow through the API; 0 when the model trained and sampled."""
    print(f"   Dashboard (live while the demo runs): {url}/ui/  API key: {key}")
    with Client(url, key) as client:
        path = corpus.write(workdir / "corpus.txt")
        print(f"1. Uploading a generated corpus ({path.stat().st_size / 1e6:.1f} MB) ...")
        ds = client.datasets.upload(path, name="demo-corpus")
        report(ds)
        if ds.status != "ready":
            return 1
        spec: dict[str, Any] = {
            "name": "demo-pretrain",
            "dataset_id": ds.id,
            "tokenizer": {"type": "byte"},
            "model": {"preset": "shakespeare"},
            "training": {
                "max_steps": steps,
                "seq_len": 64,
                "batch_size": 16,
                "lr": 2e-3,
                "warmup_steps": 20,
                "eval_interval": max(1, steps // 4),
                "eval_batches": 8,
                "checkpoint_interval": max(1, steps // 2),
            },
            "resources": {"processes_per_node": processes, "accelerator": "cpu"},
        }
        job = client.jobs.create(spec, idempotency_key=f"demo-{ds.id}")
        print(
            f"2. Job {job.id}: pretraining a {spec['model']['preset']} model on "
            f"{processes} processes (forked from the node's warm fork server, gloo); "
            f"`trainyard jobs watch {job.id}` shows:"
        )
        job = _watch(client, job.id)
        if job.status != "succeeded" or not job.model_id:
            print(f"   job {job.status}: {job.error}")
            return 1
        model = client.models.get(job.model_id)
        print(
            f"3. Model {model.id}: {job.params or 0:,} parameters, "
            f"val_loss {output.text(job.progress.val_loss)}"
        )
        prompt = "The old sailor"
        text = client.models.generate(
            model.id, prompt, max_new_tokens=120, temperature=0.8, top_k=20, seed=1
        ).text
        print(f"4. Sample: {prompt}{text}")
        folder = get_settings().resolved_storage_root / "models" / model.id
        print(f"   Files: {folder}  ({', '.join(f.name for f in model.files)})")
        return fine_tune(client, workdir, model.id, processes)


def _accuracy(client: Client, model_id: str, held_out: list[dict[str, Any]], chat: bool) -> float:
    """Exact-match accuracy on held-out prompts (greedy decoding)."""
    from trainer.chat import IM_END, render

    right = 0
    for example in held_out:
        question = example["messages"][:-1]
        answer = example["messages"][-1]["content"]
        if chat:
            reply = client.models.chat(model_id, question, max_new_tokens=8, temperature=0.0)
        else:  # the base model has no chat template: give it the same text by hand
            prompt = render(question, add_generation_prompt=True)
            reply = client.models.generate(model_id, prompt, max_new_tokens=8, temperature=0.0)
        right += reply.text.split(IM_END)[0].strip() == answer
    return right / len(held_out)


def fine_tune(client: Client, workdir: Path, base_id: str, processes: int) -> int:
    """Teach the pretrained model a skill with an SFT job; measure it before and after."""
    train = corpus.reversal_task(3000, seed=11)
    seen = {json.dumps(e) for e in train}
    held_out = [e for e in corpus.reversal_task(200, seed=99) if json.dumps(e) not in seen][:40]
    path = workdir / "reverse.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in train))
    print(f"5. Fine-tuning: teach it to reverse words ({len(train)} chat examples)")
    ds = client.datasets.upload(path, name="reverse-words")
    before = _accuracy(client, base_id, held_out, chat=False)
    print(f"   Before: exact match on {len(held_out)} held-out words {before:.0%}")
    spec = {
        "name": "demo-sft",
        "type": "sft",
        "dataset_id": ds.id,
        "model": {"base_model_id": base_id},
        # One example per row from position 0 (no packing): the answer's letters sit at
        # fixed positions, which this small model picks up within the run.
        "sft": {"method": "full", "packing": False, "eval_prompts": 3},
        "training": {
            "max_steps": 800,
            "seq_len": 40,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup_steps": 20,
            "eval_interval": 200,
            "eval_batches": 4,
            "checkpoint_interval": 400,
        },
        "resources": {"processes_per_node": processes, "accelerator": "cpu"},
    }
    job = client.jobs.create(spec, idempotency_key=f"demo-sft-{ds.id}")
    print(f"   Job {job.id}: SFT, loss on answers only, one example a row")
    job = _watch(client, job.id)
    if job.status != "succeeded" or not job.model_id:
        print(f"   job {job.status}: {job.error}")
        return 1
    for event in client.jobs.events(job.id, limit=1000).data:
        if event.type == "sample":
            asked = event.data["messages"][-1]["content"]
            print(f"   sample: {asked!r} -> {event.data['completion']!r}")
    after = _accuracy(client, job.model_id, held_out, chat=True)
    print(
        f"6. Exact match on {len(held_out)} held-out words: {before:.0%} before, "
        f"{after:.0%} after fine-tuning (model {job.model_id})"
    )
    return 0


@contextlib.contextmanager
def local_platform(data_dir: Path, log_path: Path) -> Iterator[tuple[str, str]]:
    """`trainyard up` on a free port with its data in data_dir: (API URL, a new key).

    The platform is stopped (SIGTERM, then SIGKILL) when the block ends.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(data_dir.resolve())}
    log = log_path.open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "trainyard.cli", "up", "--port", str(port)],
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_ready(url, up)
        keys = subprocess.run(
            [sys.executable, "-m", "trainyard.cli", "keys", "create", "--project", "demo"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        yield url, keys.stdout.strip().splitlines()[-1]
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()


def main(steps: int = 300, processes: int = 2) -> int:
    """Start `trainyard up`, run the demo against it, and stop it."""
    settings = get_settings()
    workdir = settings.data_dir / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log_path = workdir / "platform.log"
    print(f"Starting trainyard (API, control loop, prep and node workers); logs in {log_path}")
    with local_platform(settings.data_dir, log_path) as (url, key):
        print(f"   API on {url}")
        code = run(url, key, workdir, steps, processes)
    print(f"Done in {time.monotonic() - started:.0f}s; the platform has stopped.")
    return code
