"""The user's CLI and SDK against the real platform: upload, create, watch, logs, list,
download, cancel, login, and errors, as a person or a script would run them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

SPEC_YAML = """\
name: cli-tiny
model: {preset: tiny}
tokenizer: {type: bpe, vocab_size: 320}  # holds the chat tokens
training:
  max_steps: 500
  seq_len: 32
  batch_size: 8
  lr: 3.0e-3
  warmup_steps: 1
  eval_interval: 4
  eval_batches: 2
  checkpoint_interval: 8
resources: {processes_per_node: 1, accelerator: cpu}
"""


class Cli:
    """`trainyard ...` in a subprocess (no terminal), as one project."""

    def __init__(self, stack: Stack, key: str, home: Path) -> None:
        self.env = {
            **stack.env,
            "TRAINYARD_API_URL": stack.url,
            "TRAINYARD_API_KEY": key,
            "XDG_CONFIG_HOME": str(home),
        }

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trainyard.cli", *args],
            env=env or self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=240,
        )

    def json(self, *args: str) -> Any:
        out = self(*args, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.new_key("cli")


@pytest.fixture(scope="module")
def cli(stack: Stack, key: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(stack, key, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def dataset(cli: Cli, corpus_file: Path) -> dict[str, Any]:
    return dict(cli.json("datasets", "upload", str(corpus_file), "--name", "cli-corpus"))


@pytest.fixture(scope="module")
def trained(
    cli: Cli, dataset: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A tiny job made with `jobs create -f spec.yaml --set ...` and followed with `watch`."""
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(SPEC_YAML)
    job = cli.json(
        "jobs",
        "create",
        "-f",
        str(spec),
        "--set",
        f"dataset_id={dataset['id']}",
        "--set",
        "training.max_steps=12",
    )
    watch = cli("jobs", "watch", job["id"])
    return {"created": job, "watch": watch, "done": cli.json("jobs", "show", job["id"])}


def test_upload_shows_the_validation_report(
    cli: Cli, dataset: dict[str, Any], tmp_path: Path
) -> None:
    assert dataset["status"] == "ready" and dataset["records"] > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "a", "completion": "b"})
        + "\n{not json\n"
        + json.dumps({"prompt": "c"})
        + "\n"
    )
    out = cli("datasets", "upload", str(bad))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("status") and "invalid" in line for line in lines)
    assert any(line.startswith("2\t") for line in lines), out.stdout  # the bad line, by number


def test_create_applies_set_overrides_and_watch_exits_with_the_outcome(
    trained: dict[str, Any],
) -> None:
    created, watch, done = trained["created"], trained["watch"], trained["done"]
    assert created["spec"]["training"]["max_steps"] == 12
    assert created["spec"]["training"]["seq_len"] == 32  # from the file
    assert watch.returncode == 0, watch.stderr
    assert "\r" not in watch.stdout  # no terminal: plain lines, no animation
    last = watch.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{created['id']} succeeded step 12/12"), last
    assert done["status"] == "succeeded" and done["model_id"]


def test_list_and_logs_print_plain_lines(cli: Cli, trained: dict[str, Any]) -> None:
    job_id = trained["created"]["id"]
    listed = cli("jobs", "list")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split("\t")[:4] == ["id", "name", "type", "status"]
    assert [job_id, "cli-tiny", "pretrain", "succeeded"] in [r.split("\t")[:4] for r in rows]
    logs = cli("jobs", "logs", job_id)
    kinds = [line.split()[2] for line in logs.stdout.splitlines()]
    assert kinds[0] == "status" and "checkpoint" in kinds and "done" in kinds
    as_json = [
        json.loads(line) for line in cli("jobs", "logs", job_id, "--json").stdout.splitlines()
    ]
    assert [e["id"] for e in as_json] == sorted(e["id"] for e in as_json)


def test_models_show_and_download(cli: Cli, trained: dict[str, Any], tmp_path: Path) -> None:
    model_id = trained["done"]["model_id"]
    model = cli.json("models", "show", model_id)
    names = {f["name"] for f in model["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    got = cli.json("models", "download", model_id, "-o", str(tmp_path / "m"))
    assert {Path(p).name for p in got["files"]} == names
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] in ("llama", "gpt2")
    assert model_id in [m["id"] for m in cli.json("models", "list")["data"]]


def test_models_chat_streams_the_reply(
    cli: Cli, stack: Stack, key: str, trained: dict[str, Any]
) -> None:
    """`models chat` prints the streamed reply, the same text the non-streaming call gives
    (greedy), and sends the whole conversation with each message."""
    model_id = trained["done"]["model_id"]  # a BPE tokenizer has the chat tokens
    first = [{"role": "user", "content": "The old sailor"}]
    with Client(stack.url, key) as client:
        pieces = list(client.models.chat_stream(model_id, first, max_tokens=8, temperature=0))
        whole = client.request(
            "POST",
            "/v1/chat/completions",
            json={"model": model_id, "messages": first, "max_tokens": 8, "temperature": 0},
        )
        reply = whole["choices"][0]["message"]["content"]
        assert len(pieces) > 1 and "".join(pieces) == reply  # token by token, same text
        second = [
            *first,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "and"},
        ]
        follow_up = "".join(
            client.models.chat_stream(model_id, second, max_tokens=8, temperature=0)
        )
        with pytest.raises(TrainyardError) as caught:
            list(client.models.chat_stream("mdl_doesnotexist", first))
        assert caught.value.status == 404

    chat_args = ("models", "chat", model_id, "--temperature", "0", "--max-new-tokens", "8")
    chat = cli(*chat_args, input="The old sailor\nand\n\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == f"{reply}\n{follow_up}\n"  # a line per reply, then the end
    as_json = cli(*chat_args, "--json", input="The old sailor\n")
    assert json.loads(as_json.stdout) == {"model": model_id, "text": reply}


def test_cancel_then_watch_exits_3(cli: Cli, dataset: dict[str, Any], tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "dataset_id": dataset["id"],
                "model": {"preset": "tiny"},
                "training": {"max_steps": 100000},
            }
        )
    )
    job = cli.json("jobs", "create", "-f", str(spec))
    assert cli.json("jobs", "cancel", job["id"])["status"] in ("cancelling", "cancelled")
    assert cli("jobs", "watch", job["id"]).returncode == 3


def test_errors_name_the_code_and_exit_1(cli: Cli, tmp_path: Path) -> None:
    out = cli("jobs", "show", "job_doesnotexist")
    assert out.returncode == 1 and "not_found" in out.stderr and "HTTP 404" in out.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {preset: tiny}\ntraining: {max_steps: 5, colour: blue}\n")
    out = cli("jobs", "create", "-f", str(spec), "--set", "dataset_id=ds_x")
    assert out.returncode == 1 and "training.colour" in out.stderr, out.stderr
    out = cli("jobs", "create", "-f", str(spec), "--set", "nonsense")
    assert out.returncode == 2 and "FIELD=VALUE" in out.stderr


def test_login_stores_the_key_for_later_commands(
    cli: Cli, stack: Stack, key: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in cli.env.items() if k not in ("TRAINYARD_API_URL", "TRAINYARD_API_KEY")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    refused = cli("login", "--url", stack.url, "--key", "ty_wrong", env=env)
    assert refused.returncode == 1 and "unauthorized" in refused.stderr
    assert cli("login", "--url", stack.url, "--key", key, env=env).returncode == 0
    stored = tmp_path / "trainyard" / "credentials.json"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    listed = cli("jobs", "list", "--json", env=env)
    assert listed.returncode == 0 and "data" in json.loads(listed.stdout)


def test_sdk_create_is_idempotent_and_stream_follows_to_the_end(
    stack: Stack, key: str, dataset: dict[str, Any]
) -> None:
    spec = {"dataset_id": dataset["id"], **_spec(6)}
    with Client(stack.url, key) as client:
        first = client.jobs.create(spec, idempotency_key="sdk-test-once")
        again = client.jobs.create(spec, idempotency_key="sdk-test-once")
        assert again.id == first.id
        events = list(client.jobs.stream(first.id))
        ids, types = [e.id for e in events], [e.type for e in events]
        assert ids == sorted(set(ids)) and "done" in types and types[-1] in ("status", "model")
        done = client.jobs.wait(first.id, timeout=60)
        assert done.status == "succeeded" and done.progress.step == 6
        with pytest.raises(TrainyardError) as caught:
            client.jobs.create({**spec, "training": {"max_steps": -1}})
        assert caught.value.status == 422 and caught.value.details


def _spec(steps: int) -> dict[str, Any]:
    return {
        "model": {"preset": "tiny"},
        "training": {
            "max_steps": steps,
            "seq_len": 32,
            "batch_size": 8,
            "warmup_steps": 1,
            "eval_interval": steps,
            "eval_batches": 2,
            "checkpoint_interval": steps,
        },
        "resources": {"processes_per_node": 1, "accelerator": "cpu"},
    }
