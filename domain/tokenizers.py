"""Tokenizers: uploaded `tokenizer.json` files and BPE tokenizers trained on datasets."""

from __future__ import annotations

from sqlalchemy.orm import Session
from tokenizers import Tokenizer as HFTokenizer

from domain.access import owned
from domain.errors import BadInput, Invalid
from domain.orm import Tokenizer
from domain.uploads import Upload
from trainer import tokenizer as toks
from trainyard.ids import new_id
from trainyard.storage import Storage

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


def create(*, session: Session, storage: Storage, project_id: str, upload: Upload) -> Tokenizer:
    """Check an uploaded tokenizer.json (parsed as JSON, never unpickled) and store it."""
    try:
        if upload.size == 0:
            raise BadInput("empty_file", "the uploaded file is empty")
        try:
            tok = HFTokenizer.from_file(str(upload.path))
        except Exception as exc:
            raise Invalid("invalid_tokenizer", f"not a Hugging Face tokenizer.json: {exc}") from exc
        try:
            toks.eot_id(tok)
        except ValueError as exc:
            raise Invalid(
                "invalid_tokenizer",
                f"the tokenizer needs an end-of-text token {toks.EOT!r} to separate documents",
            ) from exc
        row = Tokenizer(
            id=new_id("tok"),
            project_id=project_id,
            kind="uploaded",
            vocab_size=toks.vocab_size(tok),
            status="ready",
        )
        target = storage.tokenizer_file(row.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(target)
    finally:
        upload.path.unlink(missing_ok=True)
    session.add(row)
    session.commit()
    return row


def get(*, session: Session, project_id: str, tokenizer_id: str) -> Tokenizer:
    """A tokenizer of the caller's project, or a 404."""
    return owned(session, Tokenizer, tokenizer_id, project_id, "tokenizer")
