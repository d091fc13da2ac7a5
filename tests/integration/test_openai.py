"""The OpenAI-compatible surface on the real stack, driven by the official `openai` SDK:
files, fine-tuning jobs (create, wait, events, checkpoints, cancel, pause, resume, paging),
result files, chat completions (plain and streamed, from models and checkpoints, in the
model worker pool and refused with a 429 when it is full), models, and every error class."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from tests.integration.test_sft import BASE, reverse_task
from tests.stack import Database, Stack
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

# Tiny, fast fine-tuning: every option OpenAI lacks goes through `extra_body`.
FAST = {
    "training": {
        "warmup_steps": 2,
        "eval_interval": 5,
        "eval_batches": 2,
        "checkpoint_interval": 5,
    },
    "resources": {"accelerator": "cpu"},
}
DONE = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.new_key("openai")


@pytest.fixture(scope="module")
def native(stack: Stack, key: str) -> Client:
    return Client(stack.url, key)


@pytest.fixture(scope="module")
def oa(stack: Stack, key: str) -> OpenAI:
    """A fresh SDK client; no retries, so each error shows as the server sent it."""
    return OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def base_model(native: Client, corpus_file: Path) -> dict[str, Any]:
    ds = native.wait_dataset(str(native.upload_dataset(corpus_file)["id"]))
    job = native.wait_job(native.create_job({"dataset_id": ds["id"], **BASE})["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return native.model(job["model_id"])


def jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def train_file(oa: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = jsonl(tmp_path_factory.mktemp("oa") / "reverse.jsonl", reverse_task(80, 3))
    with path.open("rb") as f:
        return oa.files.create(file=f, purpose="fine-tune")


def wait(oa: OpenAI, job_id: str, until: Callable[[Any], bool], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = oa.fine_tuning.jobs.retrieve(job_id)
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def test_files_upload_validate_list_content_delete(
    oa: OpenAI, native: Client, train_file: Any, tmp_path: Path
) -> None:
    assert train_file.status == "processed" and train_file.status_details is None
    assert train_file.purpose == "fine-tune" and train_file.filename == "reverse.jsonl"
    assert native.dataset(train_file.id)["records"] == 80  # one row, both APIs
    assert oa.files.retrieve(train_file.id).bytes == train_file.bytes

    bad = reverse_task(5, 4)
    bad[2] = {"messages": [{"role": "user", "content": "a question and no answer"}]}
    with jsonl(tmp_path / "bad.jsonl", bad).open("rb") as f:
        rejected = oa.files.create(file=f, purpose="fine-tune")
    assert rejected.status == "error"
    assert rejected.status_details is not None and "line 3" in rejected.status_details

    pair = {
        "input": {"messages": [{"role": "user", "content": "abc"}]},
        "preferred_output": [{"role": "assistant", "content": "cba"}],
        "non_preferred_output": [{"role": "assistant", "content": "abc"}],
    }
    same = {**pair, "non_preferred_output": pair["preferred_output"]}
    with jsonl(tmp_path / "prefs.jsonl", [pair, same]).open("rb") as f:
        prefs = oa.files.create(file=f, purpose="fine-tune")
    assert prefs.status == "error" and "line 2" in (prefs.status_details or "")
    assert native.dataset(prefs.id)["kind"] == "dpo"

    content = oa.files.content(train_file.id).read()
    assert len(content) == train_file.bytes and len(content.splitlines()) == 80
    ids = [f.id for f in oa.files.list(limit=1)]  # pages of one, followed to the end
    assert {train_file.id, rejected.id, prefs.id} <= set(ids) and ids == sorted(ids, reverse=True)
    assert [f.id for f in oa.files.list(order="asc")] == sorted(ids)

    gone = oa.files.delete(rejected.id)
    assert gone.deleted and gone.id == rejected.id
    with pytest.raises(openai.NotFoundError):
        oa.files.retrieve(rejected.id)
    with pytest.raises(openai.BadRequestError) as err:
        oa.files.create(file=("x.jsonl", b'{"text": "x"}\n'), purpose="assistants")  # type: ignore[arg-type]
    assert err.value.param == "purpose"


@pytest.fixture(scope="module")
def other(stack: Stack) -> OpenAI:
    """A client of another project."""
    return OpenAI(base_url=stack.url + "/v1", api_key=stack.new_key("openai-other"), max_retries=0)


def test_fine_tune_then_chat_and_models(
    oa: OpenAI, other: OpenAI, native: Client, base_model: dict[str, Any], train_file: Any
) -> None:
    job = oa.fine_tuning.jobs.create(
        model=base_model["id"],
        training_file=train_file.id,
        suffix="rev",
        metadata={"team": "search"},
        hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2},
        extra_body=FAST,
    )
    assert job.object == "fine_tuning.job" and job.status == "queued" and job.error is None
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 2
    assert native.job(job.id)["spec"]["training"]["lr"] == pytest.approx(2e-4)  # same job
    assert isinstance(job.seed, int) and job.metadata == {"team": "search"}

    done = wait(oa, job.id, lambda j: j.status in DONE)
    assert done.status == "succeeded", done
    assert done.error is None and done.finished_at and done.trained_tokens
    name = done.fine_tuned_model
    assert name == f"ft:{base_model['id']}:{done.organization_id}:rev:{job.id}"

    events = list(oa.fine_tuning.jobs.list_events(job.id, limit=5))  # paged, newest first
    assert [int(e.id) for e in events] == sorted((int(e.id) for e in events), reverse=True)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and metrics[0].data["total_steps"] == 10
    assert {"step", "train_loss", "valid_loss"} <= set(metrics[0].data)
    for key in ("train_mean_token_accuracy", "valid_mean_token_accuracy"):
        assert 0 <= metrics[0].data[key] <= 1, metrics[0].data
    checkpoints = list(oa.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [10, 5]
    assert checkpoints[0].metrics.train_loss is not None
    accuracy = checkpoints[0].metrics.train_mean_token_accuracy
    assert accuracy is not None and 0 <= accuracy <= 1  # 0.0 is an accuracy too
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [
        f"{name}:ckpt-step-10",
        f"{name}:ckpt-step-5",
    ]
    for key in ("valid_loss", "valid_mean_token_accuracy"):
        assert getattr(checkpoints[0].metrics, key) is not None, checkpoints[0].metrics

    assert oa.models.retrieve(name).id == native.job(job.id)["model_id"]  # ':' in the path
    listed = oa.models.list()
    assert {base_model["id"], native.job(job.id)["model_id"]} <= {m.id for m in listed}

    ask = [{"role": "user", "content": "abcd"}]
    reply = oa.chat.completions.create(
        model=name,
        messages=ask,
        max_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    usage = reply.usage
    assert usage and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6

    chunks = list(
        oa.chat.completions.create(
            model=name,
            messages=ask,  # type: ignore[arg-type]
            max_completion_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same reply either way
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == choice.finish_reason and not any(finish[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == usage

    two = oa.chat.completions.create(
        model=name,
        messages=ask,
        max_tokens=4,
        n=2,
        seed=7,  # type: ignore[arg-type]
    )
    assert [c.index for c in two.choices] == [0, 1]

    # The name serves the native generate route too (':' in the path).
    r = native.http.post(f"/v1/models/{name}/generate", json={"messages": ask, "temperature": 0})
    assert r.status_code == 200 and r.json()["model_id"] == native.job(job.id)["model_id"], r.text

    # A checkpoint serves from its own weights: the last one is the final model.
    last, first = (c.fine_tuned_model_checkpoint for c in checkpoints)
    again = oa.chat.completions.create(model=last, messages=ask, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert again.choices[0].message.content == choice.message.content
    assert again.model == last and again.usage == usage
    early = oa.chat.completions.create(model=first, messages=ask, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert early.choices[0].message.role == "assistant" and early.usage
    streamed = oa.chat.completions.create(
        model=first,
        messages=ask,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        early.choices[0].message.content
    )
    shown = oa.models.retrieve(first)
    assert shown.id == first and shown.owned_by == done.organization_id
    for missing in (f"{name}:ckpt-step-7", f"ft:x:{done.organization_id}::{job.id}:ckpt-step-5"):
        with pytest.raises(openai.NotFoundError) as err:  # no such step; not this job's name
            oa.chat.completions.create(model=missing, messages=ask)  # type: ignore[arg-type]
        assert err.value.code == "model_not_found"
    for call in (
        lambda: other.chat.completions.create(model=first, messages=ask),  # type: ignore[arg-type]
        lambda: other.models.retrieve(first),
        lambda: other.chat.completions.create(model=name, messages=ask),  # type: ignore[arg-type]
    ):
        with pytest.raises(openai.NotFoundError) as err:  # another project's: not found
            call()
        assert err.value.code == "model_not_found"

    # The job's result file: OpenAI's CSV of step metrics, in this project's files only.
    assert len(done.result_files) == 1
    result = oa.files.retrieve(done.result_files[0])
    assert result.purpose == "fine-tune-results" and result.status == "processed"
    content = oa.files.content(result.id).read()
    assert len(content) == result.bytes
    lines = content.decode().splitlines()
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    rows = [line.split(",") for line in lines[1:]]
    series = native.metrics(job.id)
    assert [int(r[0]) for r in rows] == [p["step"] for p in series["loss"]] == list(range(1, 11))
    assert [float(r[1]) for r in rows] == [p["value"] for p in series["loss"]]
    assert [float(r[2]) for r in rows] == [p["value"] for p in series["token_accuracy"]]
    valid = {int(r[0]): (r[3], r[4]) for r in rows if r[3]}
    assert sorted(valid) == [p["step"] for p in series["val_loss"]] == [5, 10]
    assert [float(v[0]) for v in valid.values()] == [p["value"] for p in series["val_loss"]]
    assert all(r[3] == r[4] == "" for r in rows if int(r[0]) not in valid)
    assert oa.files.content(result.id).read() == content  # stored once
    assert result.id in {f.id for f in oa.files.list()}
    assert [f.id for f in oa.files.list(purpose="fine-tune-results")] == [result.id]
    assert result.id not in {f.id for f in oa.files.list(purpose="fine-tune")}
    assert result.id not in {f.id for f in other.files.list()}
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(result.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(result.id)
    with pytest.raises(openai.BadRequestError) as refused:  # nothing trains on it
        oa.fine_tuning.jobs.create(model=base_model["id"], training_file=result.id)
    assert refused.value.param == "training_file"

    # The fine-tuned model's name is a base for another job; the name keeps the first base.
    again_job = oa.fine_tuning.jobs.create(
        model=name, training_file=train_file.id, suffix="more", extra_body=FAST
    )
    assert again_job.model == name
    assert native.job(again_job.id)["name"] == (
        f"ft:{base_model['id']}:{done.organization_id}:more:{again_job.id}"
    )
    assert (
        native.job(again_job.id)["spec"]["model"]["base_model_id"]
        == (native.job(job.id)["model_id"])
    )
    oa.fine_tuning.jobs.cancel(again_job.id)

    assert oa.files.delete(result.id).deleted  # a result file may be deleted, as OpenAI allows
    with pytest.raises(openai.NotFoundError):
        oa.files.content(result.id)
    assert oa.fine_tuning.jobs.retrieve(job.id).result_files == [result.id]
    if choice.message.content:
        stop = choice.message.content[-1]
        cut = oa.chat.completions.create(
            model=name,
            messages=ask,
            max_tokens=6,
            temperature=0,
            stop=stop,  # type: ignore[arg-type]
        )
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content


def test_pause_resume_cancel_and_paging(
    oa: OpenAI, native: Client, base_model: dict[str, Any], train_file: Any
) -> None:
    slow = {**FAST, "training": {**FAST["training"], "checkpoint_interval": 2}}
    job = oa.fine_tuning.jobs.create(
        model=base_model["id"],
        training_file=train_file.id,
        hyperparameters={"n_epochs": 20, "batch_size": 8},
        metadata={"run": "pause"},
        extra_body=slow,
        extra_headers={"Idempotency-Key": "pause-run"},
    )
    again = oa.fine_tuning.jobs.create(
        model=base_model["id"],
        training_file=train_file.id,
        hyperparameters={"n_epochs": 20, "batch_size": 8},
        metadata={"run": "pause"},
        extra_body=slow,
        extra_headers={"Idempotency-Key": "pause-run"},
    )
    assert again.id == job.id and again.seed == job.seed

    running = wait(
        oa, job.id, lambda j: j.status == "running" and native.job(j.id)["progress"]["step"] >= 3
    )
    assert running.status == "running"
    assert running.estimated_finish and running.estimated_finish >= running.created_at
    assert running.trained_tokens
    oa.fine_tuning.jobs.pause(job.id)
    paused = wait(oa, job.id, lambda j: j.status in DONE | {"paused"})
    assert paused.status == "paused", paused
    at = native.job(job.id)["progress"]["step"]
    assert oa.fine_tuning.jobs.pause(job.id).status == "paused"  # idempotent
    assert oa.fine_tuning.jobs.resume(job.id).status == "queued"
    resumed = wait(oa, job.id, lambda j: native.job(j.id)["attempt"] == 2 and j.status == "running")
    assert resumed.status == "running"
    with pytest.raises(openai.BadRequestError) as err:  # 400, not 409, so the SDK won't retry
        oa.fine_tuning.jobs.resume(job.id)
    assert err.value.code == "job_not_paused"
    deadline = time.monotonic() + 120
    resumed_at: list[str] = []
    while not resumed_at and time.monotonic() < deadline:  # the trainer's own word
        logs = [e.message for e in oa.fine_tuning.jobs.list_events(job.id, limit=100)]
        resumed_at = [m for m in logs if m.startswith("resuming from")]
        time.sleep(0.3)
    assert resumed_at and int(resumed_at[0].rsplit(" ", 1)[1]) >= min(at, 3), logs

    cancelled = oa.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    done = wait(oa, job.id, lambda j: j.finished_at is not None)
    assert done.status == "cancelled" and done.error is None
    with pytest.raises(openai.BadRequestError):
        oa.fine_tuning.jobs.pause(job.id)

    listed = [j.id for j in oa.fine_tuning.jobs.list(limit=1)]  # followed page by page
    assert job.id in listed and len(listed) == len(set(listed)) >= 2
    by_meta = list(oa.fine_tuning.jobs.list(metadata={"run": "pause"}))
    assert [j.id for j in by_meta] == [job.id]


def test_error_classes(
    oa: OpenAI, stack: Stack, base_model: dict[str, Any], train_file: Any
) -> None:
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=stack.url + "/v1", api_key="ty_wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as err:
        oa.fine_tuning.jobs.retrieve("job_missing")
    assert err.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as err:
        oa.models.retrieve("ft:nothing:here")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        oa.chat.completions.create(model="org/missing", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:  # a base model cannot chat
        oa.chat.completions.create(
            model=base_model["id"], messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "not_a_chat_model"
    with pytest.raises(openai.NotFoundError):
        oa.fine_tuning.jobs.create(model=base_model["id"], training_file="ds_missing")

    cases: list[tuple[dict[str, Any], str]] = [
        ({"extra_body": {"lora_rank": 4}}, "lora_rank"),
        ({"extra_body": {"sft": {"method": "lora", "lora": {"rank": 0}}}}, "sft.lora.rank"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "reinforcement", "reinforcement": {"grader": {}}}}, "method.type"),
        # chat examples are no preference pairs
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}}, "training_file"),
        ({"method": {"type": "dpo"}, "extra_body": {"sft": {"method": "lora"}}}, "sft"),
        ({"method": {"type": "dpo"}, "extra_body": {"dpo": {"beta": 0}}}, "dpo.beta"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"extra_body": {"training": {"batch_size": 8}}, "hyperparameters": {"batch_size": 4}},
            "training.batch_size",
        ),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            oa.fine_tuning.jobs.create(
                model=base_model["id"], training_file=train_file.id, **kwargs
            )
        assert err.value.param == param, (kwargs, err.value.body)


@pytest.fixture(scope="module")
def tight(
    stack: Stack, postgres_db: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A second API process on the same database and storage whose model pool takes one
    call at a time, one per project."""
    extra = {
        "TRAINYARD_MODEL_WORKERS": "1",
        "TRAINYARD_MODEL_QUEUE": "0",
        "TRAINYARD_MODEL_CALLS_PER_PROJECT": "1",
        "TRAINYARD_MODEL_CALL_SECONDS": "60",
    }
    with Stack(tmp_path_factory.mktemp("tight"), postgres_db.url, extra_env=extra) as s:
        s.env["TRAINYARD_STORAGE_ROOT"] = stack.env["TRAINYARD_STORAGE_ROOT"]
        s.start("api", "api", "--port", str(s.port))
        s.wait_ready(node=False)
        yield s


def endless_chat_model(native: Client, base_model: dict[str, Any], folder: Path) -> str:
    """Import the base model with the chat tokens and every weight zero: greedy sampling
    then picks token 0 at every step, never `<|im_end|>`, so a reply runs to max_tokens."""
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        native.download(base_model["id"], name, folder / name)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    old = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    new = tok.get_vocab_size(with_added_tokens=True)
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = new
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    zero = {
        k: np.zeros((new, *v.shape[1:]) if v.shape[0] == old else v.shape, dtype=np.float32)
        for k, v in weights.items()
    }
    save_file(zero, str(folder / "model.safetensors"), metadata={"format": "pt"})
    parts = {
        part: (filename, (folder / filename).read_bytes())
        for part, filename in (
            ("config", "config.json"),
            ("weights", "model.safetensors"),
            ("tokenizer", "tokenizer.json"),
        )
    }
    r = native.http.post("/v1/models/import", files=parts, timeout=120)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_full_model_pool_is_a_rate_limit_error(
    tight: Stack, native: Client, key: str, base_model: dict[str, Any], tmp_path: Path
) -> None:
    model = endless_chat_model(native, base_model, tmp_path)
    sdk = OpenAI(base_url=tight.url + "/v1", api_key=key, max_retries=0)
    ask = [{"role": "user", "content": "abc"}]
    held = sdk.chat.completions.create(
        model=model,
        messages=ask,  # type: ignore[arg-type]
        max_tokens=4096,
        n=8,
        temperature=0,
        stream=True,
    )
    # The answer has begun, so the pool holds the call: the one place is taken.
    first = next(iter(held))
    assert first.choices[0].delta.role == "assistant"
    with pytest.raises(openai.RateLimitError) as err:
        sdk.chat.completions.create(model=model, messages=ask, max_tokens=1)  # type: ignore[arg-type]
    assert err.value.status_code == 429 and err.value.code == "too_many_model_calls"
    assert err.value.type == "rate_limit_error"
    assert isinstance(err.value.body, dict) and {"message", "type", "param", "code"} <= set(
        err.value.body
    )
    assert int(err.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):  # streamed or not
        sdk.chat.completions.create(model=model, messages=ask, max_tokens=1, stream=True)  # type: ignore[arg-type]
    assert sdk.models.retrieve(model).id == model  # the API itself is not held up
    text = "".join(c.choices[0].delta.content or "" for _, c in zip(range(50), held, strict=False))
    assert text  # tokens keep coming while the call runs
    held.close()  # the client goes away: its call stops and frees the place
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = sdk.chat.completions.create(
                model=model,
                messages=ask,  # type: ignore[arg-type]
                max_tokens=3,
                temperature=0,
            )
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the closed stream kept its place"
            time.sleep(0.5)
    assert reply.choices[0].finish_reason == "length" and reply.usage
    assert reply.usage.completion_tokens == 3


def preference_task(n: int, seed: int) -> list[dict[str, Any]]:
    """Preference pairs: the reversed word is preferred to the word repeated back."""
    return [
        {
            "input": {"messages": r["messages"][1:2]},  # a pair must fit the base's 64 tokens
            "preferred_output": [r["messages"][2]],
            "non_preferred_output": [{"role": "assistant", "content": r["messages"][1]["content"]}],
        }
        for r in reverse_task(n, seed)
        if r["messages"][1]["content"] != r["messages"][2]["content"]  # no palindromes
    ]


def test_dpo_fine_tune_end_to_end(
    oa: OpenAI,
    stack: Stack,
    native: Client,
    base_model: dict[str, Any],
    train_file: Any,
    tmp_path: Path,
) -> None:
    with jsonl(tmp_path / "prefs.jsonl", preference_task(48, 5)).open("rb") as f:
        prefs = oa.files.create(file=f, purpose="fine-tune")
    with jsonl(tmp_path / "prefs-val.jsonl", preference_task(16, 6)).open("rb") as f:
        val = oa.files.create(file=f, purpose="fine-tune")
    assert prefs.status == val.status == "processed"
    # Natively too, a dpo job needs preference pairs and an sft job chat examples.
    for kind, dataset in (("dpo", train_file.id), ("sft", prefs.id)):
        with pytest.raises(TrainyardError) as refused:
            native.create_job(
                {"type": kind, "dataset_id": dataset, "model": {"base_model_id": base_model["id"]}}
            )
        assert refused.value.status == 409 and refused.value.code == "dataset_kind"
        assert refused.value.message.startswith("dataset_id:")
    job = oa.fine_tuning.jobs.create(
        model=base_model["id"],
        training_file=prefs.id,
        validation_file=val.id,
        suffix="pref",
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {"beta": 0.2, "n_epochs": 2, "learning_rate_multiplier": 10}
            },
        },
        extra_body={**FAST, "dpo": {"method": "full"}},
    )
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    spec = native.job(job.id)["spec"]  # the same job in the native API
    assert spec["type"] == "dpo" and spec["dpo"]["beta"] == 0.2 and spec["sft"] is None

    done = wait(oa, job.id, lambda j: j.status in DONE)
    assert done.status == "succeeded", (done, native.events(job.id))
    assert done.fine_tuned_model == f"ft:{base_model['id']}:{done.organization_id}:pref:{job.id}"
    series = native.metrics(job.id)
    assert abs(series["loss"][0]["value"] - math.log(2)) < 1e-4  # policy == reference at step 1
    assert series["reward_accuracy"][0]["value"] == 0.5  # every pair a tie
    for name in ("reward_margin", "reward_chosen", "reward_rejected", "val_reward_accuracy"):
        assert len(series[name]) >= 1, name
    # The policy has moved off the reference (learning itself is shown in tests/trainer).
    assert series["reward_margin"][-1]["value"] != 0.0
    assert len(series["loss"]) == native.job(job.id)["spec"]["training"]["max_steps"]
    metrics = [e for e in oa.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"]
    assert metrics and {"valid_loss", "val_reward_accuracy", "val_reward_margin"} <= set(
        metrics[0].data
    )
    ask = [{"role": "user", "content": "abc"}]
    reply = oa.chat.completions.create(
        model=str(done.fine_tuned_model),
        messages=ask,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].message.role == "assistant"
    last, *_, first = oa.fine_tuning.jobs.checkpoints.list(job.id)
    from_last = oa.chat.completions.create(
        model=last.fine_tuned_model_checkpoint,
        messages=ask,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    assert from_last.choices[0].message.content == reply.choices[0].message.content
    # A checkpoint the job no longer keeps (pruned as trainer.checkpoint prunes) is gone.
    kept = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "jobs" / job.id / "checkpoints"
    shutil.rmtree(kept / f"step-{first.step_number:08d}", ignore_errors=True)
    with pytest.raises(openai.NotFoundError) as err:
        oa.chat.completions.create(model=first.fine_tuned_model_checkpoint, messages=ask)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found" and "no longer kept" in err.value.message
