"""Cleaning through the API: a planted corpus cleaned by the real prep worker, its report
and text read back, and every refusal a user can meet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stack import Stack
from trainyard.cleaning.pipeline import read_documents
from trainyard.cleaning.planted import generate
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("cleaning"))


def _ready(client: Client, path: Path) -> str:
    dataset = client.upload_dataset(path)
    assert client.wait_dataset(dataset["id"], timeout=120)["status"] == "ready"
    return str(dataset["id"])


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_a_planted_corpus_is_cleaned_into_a_new_dataset(
    client: Client, tmp_path: Path, fmt: str
) -> None:
    corpus = generate(documents=40, seed=11)
    source_id = _ready(client, corpus.write(tmp_path / f"planted.{fmt}", fmt))

    cleaned = client.clean_dataset(source_id, dedup={"threshold": 0.85})

    assert cleaned["status"] == "cleaning" and cleaned["id"] != source_id
    assert cleaned["source_dataset_id"] == source_id
    assert cleaned["format"] == fmt and cleaned["kind"] == "pretrain"
    assert cleaned["cleaning"]["dedup"]["threshold"] == 0.85
    assert cleaned["cleaning"]["quality"]["min_words"] == 50  # defaults resolved and shown
    done = client.wait_dataset(cleaned["id"], timeout=120)
    assert done["status"] == "ready", done
    report = done["cleaning_report"]
    assert report["documents_in"] == len(corpus.documents)
    assert report["documents_out"] == len(corpus.expected)
    assert report["steps"]["exact_dedup"]["removed"] == corpus.planted["exact_duplicate"]
    assert report["steps"]["near_dedup"]["removed"] == corpus.planted["near_duplicate"]
    assert report["steps"]["quality"]["removed"] == corpus.planted["junk"]
    assert done["bytes"] == report["bytes_out"]

    text = client.dataset_content(done["id"], tmp_path / f"cleaned.{fmt}")
    docs = [d.text.strip() for d in read_documents(text, fmt, 1 << 22) if d.text]
    assert docs == corpus.expected
    assert done["records"] == len(text.read_bytes().splitlines())
    original = client.dataset_content(source_id, tmp_path / f"original.{fmt}")
    assert original.read_bytes() == (tmp_path / f"planted.{fmt}").read_bytes()


def test_bad_options_and_unusable_datasets_are_refused(client: Client, tmp_path: Path) -> None:
    corpus = generate(documents=3, seed=12)
    source_id = _ready(client, corpus.write(tmp_path / "small.txt", "text"))
    before = client.request("GET", "/v1/datasets", params={"limit": 100})["data"]

    with pytest.raises(TrainyardError) as err:
        client.clean_dataset(source_id, dedup={"threshold": 1.5})
    assert err.value.status == 422 and "threshold" in err.value.message
    with pytest.raises(TrainyardError) as err:
        client.clean_dataset(source_id, normalise={})
    assert err.value.status == 422 and "normalise" in err.value.message
    with pytest.raises(TrainyardError) as err:
        client.clean_dataset("ds_missing")
    assert err.value.status == 404

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "2+2=", "completion": "4"}) + "\n")
    chat_id = _ready(client, chat)
    with pytest.raises(TrainyardError) as err:
        client.clean_dataset(chat_id)
    assert err.value.status == 422 and err.value.code == "unsupported_kind"
    after = client.request("GET", "/v1/datasets", params={"limit": 100})["data"]
    assert [d["id"] for d in after if d["id"] != chat_id] == [d["id"] for d in before]

    # Everything removed: the cleaned dataset is invalid and says why.
    junk = client.clean_dataset(source_id, quality={"min_words": 100_000})
    done = client.wait_dataset(junk["id"], timeout=120)
    assert done["status"] == "invalid"
    assert done["errors"][0]["message"] == "cleaning removed every document"
    removed = {"min_words": len(corpus.documents)}
    assert done["cleaning_report"]["steps"]["quality"]["by_rule"] == removed
