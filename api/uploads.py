"""Streaming multipart uploads: chunks go straight to a temporary file under a size cap.

The body is parsed as it arrives, hashed on the way, and never held in memory; an upload
over the cap stops at the cap with a 413 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError

HEAD_BYTES = 64 * 1024


@dataclass
class Upload:
    """A received file, still in its temporary place."""

    path: Path
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """Callbacks for the multipart parser: the `file` part to disk, small fields to memory."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.hash = hashlib.sha256()
        self.size = 0
        self.head = bytearray()
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.seen_file = False
        self._name: str | None = None
        self._is_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._headers = {}
        self._value = bytearray()
        self._name, self._is_file = None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.seen_file:
                raise ApiError(400, "invalid_upload", "send exactly one part named 'file'")
            self.seen_file = self._is_file = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace")[:255] if raw else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            self._value += data[start:end]
            if len(self._value) > 4096:
                raise ApiError(400, "invalid_upload", f"form field {self._name!r} is too long")
            return
        self.size += end - start
        if self.size > self.cap:
            raise ApiError(
                413,
                "upload_too_large",
                f"file exceeds the upload limit of {self.cap} bytes",
                {"limit_bytes": self.cap},
            )
        # A view of the parser's buffer: hashed and written without copying the bytes.
        view = memoryview(data)[start:end]
        self.hash.update(view)
        if len(self.head) < HEAD_BYTES:
            self.head += view[: HEAD_BYTES - len(self.head)]
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def on_part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")


async def receive(request: Request, tmp_dir: Path, cap: int) -> Upload:
    """Stream a `multipart/form-data` body with a `file` part into a temporary file."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a 'file' part")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap + 64 * 1024:
        raise ApiError(
            413,
            "upload_too_large",
            f"file exceeds the upload limit of {cap} bytes",
            {"limit_bytes": cap},
        )
    fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
    path = Path(name)
    receiver = _Receiver(fd, cap)
    callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    if not receiver.seen_file:
        path.unlink(missing_ok=True)
        raise ApiError(400, "invalid_upload", "the form has no part named 'file'")
    return Upload(
        path=path,
        filename=receiver.filename,
        size=receiver.size,
        sha256=receiver.hash.hexdigest(),
        head=bytes(receiver.head),
        fields=receiver.fields,
    )
