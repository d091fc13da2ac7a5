"""Streaming multipart uploads: chunks go straight to a temporary file under a size cap.

The body is parsed as it arrives, hashed on the way, and never held in memory; an upload
over the cap stops at the cap with a 413 and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError
from domain.uploads import Upload
from trainyard.settings import get_settings

HEAD_BYTES = 64 * 1024
# Room for the boundaries and part headers of a form, beyond the cap on its contents.
FORM_OVERHEAD = 64 * 1024


class _FilePart:
    """One file part streaming to its own temporary file."""

    def __init__(self, tmp_dir: Path, filename: str | None) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
        self.fd, self.path, self.filename = fd, Path(name), filename
        self.hash = hashlib.sha256()
        self.size = 0
        self.head = bytearray()

    def write(self, view: memoryview) -> None:
        self.size += len(view)
        # A view of the parser's buffer: hashed and written without copying the bytes.
        self.hash.update(view)
        if len(self.head) < HEAD_BYTES:
            self.head += view[: HEAD_BYTES - len(self.head)]
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def upload(self, fields: dict[str, str]) -> Upload:
        return Upload(
            path=self.path,
            filename=self.filename,
            size=self.size,
            sha256=self.hash.hexdigest(),
            head=bytes(self.head),
            fields=fields,
        )


class _Receiver:
    """Callbacks for the multipart parser: named file parts to disk, small fields to memory."""

    def __init__(
        self, tmp_dir: Path, cap: int, file_names: tuple[str, ...], max_parts: int
    ) -> None:
        self.tmp_dir = tmp_dir
        self.cap = cap
        self.max_parts = max_parts
        self.parts = 0
        self.file_names = file_names
        self.total = 0
        self.files: dict[str, _FilePart] = {}
        self.fields: dict[str, str] = {}
        self._name: str | None = None
        self._file: _FilePart | None = None
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise ApiError(
                413,
                "too_many_parts",
                f"the form has more than {self.max_parts} parts",
                {"limit_parts": self.max_parts},
            )
        self._headers = {}
        self._value = bytearray()
        self._name, self._file = None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        if len(self._header_field) > 1024:
            raise ApiError(400, "invalid_upload", "a part header is too long")

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > 4096:
            raise ApiError(400, "invalid_upload", "a part header is too long")

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name in self.file_names:
            if self._name in self.files:
                raise ApiError(400, "invalid_upload", f"send one part named {self._name!r}")
            raw = params.get(b"filename")
            filename = raw.decode("utf-8", "replace")[:255] if raw else None
            self._file = self.files[self._name] = _FilePart(self.tmp_dir, filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            self._value += data[start:end]
            if len(self._value) > 4096:
                raise ApiError(400, "invalid_upload", f"form field {self._name!r} is too long")
            return
        self.total += end - start
        if self.total > self.cap:
            raise ApiError(
                413,
                "upload_too_large",
                f"file exceeds the upload limit of {self.cap} bytes",
                {"limit_bytes": self.cap},
            )
        self._file.write(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        if self._file is None and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def discard(self) -> None:
        for part in self.files.values():
            part.close()
            part.path.unlink(missing_ok=True)


async def receive_files(
    request: Request, tmp_dir: Path, cap: int, names: tuple[str, ...]
) -> dict[str, Upload]:
    """Stream a `multipart/form-data` body's named file parts into temporary files; every
    name must be present. The cap bounds all files together."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    wanted = ", ".join(repr(n) for n in names)
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(415, "unsupported_media_type", f"send multipart/form-data with {wanted}")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap + FORM_OVERHEAD:
        raise ApiError(
            413,
            "upload_too_large",
            f"file exceeds the upload limit of {cap} bytes",
            {"limit_bytes": cap},
        )
    receiver = _Receiver(tmp_dir, cap, names, get_settings().max_form_parts)
    callbacks = {name: getattr(receiver, name) for name in dir(receiver) if name.startswith("on_")}
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            # Every byte of the body counts, form fields and part headers included.
            received += len(chunk)
            if received > cap + FORM_OVERHEAD:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"the form exceeds the upload limit of {cap} bytes",
                    {"limit_bytes": cap},
                )
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        receiver.discard()
        raise
    for part in receiver.files.values():
        part.close()
    missing = [n for n in names if n not in receiver.files]
    if missing:
        receiver.discard()
        raise ApiError(
            400,
            "invalid_upload",
            f"the form has no part named {missing[0]!r}",
            {"missing": missing},
        )
    return {name: part.upload(receiver.fields) for name, part in receiver.files.items()}


async def receive(request: Request, tmp_dir: Path, cap: int) -> Upload:
    """Stream a `multipart/form-data` body with a `file` part into a temporary file."""
    return (await receive_files(request, tmp_dir, cap, ("file",)))["file"]
