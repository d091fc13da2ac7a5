"""The storage layout shared by every process: one root, fixed relative paths.

Only ids that trainyard minted ever become path components; user filenames never do.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard.settings import Settings

_SAFE = re.compile(r"^[a-z]+_[0-9a-z]+$|^byte$")
_SFT_VARIANT = re.compile(r"^(sft|dpo)-[0-9]+-(truncate|drop)-([0-9.]+|ds)$")


def _part(value: str) -> str:
    # Refuse anything that is not one of our ids, so no request can steer a path.
    if not _SAFE.fullmatch(value):
        raise ValueError(f"not a storage id: {value!r}")
    return value


class Storage:
    """Paths under the storage root, per design.md's storage layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """The storage under the configured root."""
        return cls(settings.resolved_storage_root)

    def dataset_dir(self, dataset_id: str) -> Path:
        """The folder of one dataset."""
        return self.root / "datasets" / _part(dataset_id)

    def dataset_source(self, dataset_id: str) -> Path:
        """The upload exactly as received."""
        return self.dataset_dir(dataset_id) / "source"

    def tokens_dir(self, dataset_id: str, tokenizer_key: str) -> Path:
        """Token shards of one dataset under one tokenizer."""
        return self.dataset_dir(dataset_id) / "tokens" / _part(tokenizer_key)

    def sft_tokens_dir(self, dataset_id: str, key: str) -> Path:
        """SFT (or DPO) shards of a dataset for a base model and a variant: `mdl_x/sft-...`."""
        model_id, _, variant = key.partition("/")
        if not _SFT_VARIANT.fullmatch(variant):
            raise ValueError(f"not an SFT shard key: {key!r}")
        return self.dataset_dir(dataset_id) / "tokens" / _part(model_id) / variant

    def tokenizer_file(self, tokenizer_key: str) -> Path:
        """A tokenizer's `tokenizer.json`."""
        return self.root / "tokenizers" / _part(tokenizer_key) / "tokenizer.json"

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        """run.json, events.jsonl and logs of one attempt."""
        return self.root / "jobs" / _part(job_id) / f"attempt-{int(attempt)}"

    def checkpoint_dir(self, job_id: str) -> Path:
        """Checkpoints of a job, shared by its attempts so a retry resumes."""
        return self.root / "jobs" / _part(job_id) / "checkpoints"

    def checkpoint_step_dir(self, job_id: str, step: int) -> Path:
        """One checkpoint of a job (see trainer.checkpoint for its files)."""
        return self.checkpoint_dir(job_id) / f"step-{int(step):08d}"

    def checkpoint_model_dir(self, job_id: str, step: int) -> Path:
        """A checkpoint exported as a model folder, written when it is first sampled."""
        return self.root / "jobs" / _part(job_id) / "checkpoint-models" / f"step-{int(step):08d}"

    def model_dir(self, model_id: str) -> Path:
        """A finished model's files."""
        return self.root / "models" / _part(model_id)

    def uploads_tmp(self) -> Path:
        """Where uploads land while they stream, before they are committed."""
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sweep_tmp(self, older_than_seconds: float) -> int:
        """Remove what a crash left in the temporary folder (untouched for that long);
        how many entries went. A live upload keeps its file's time fresh."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self.uploads_tmp().iterdir():
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except FileNotFoundError:
                continue  # another process swept or committed it first
        return removed

    def remove_dataset(self, dataset_id: str) -> None:
        """Delete a dataset's files."""
        shutil.rmtree(self.dataset_dir(dataset_id), ignore_errors=True)
