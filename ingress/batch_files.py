"""Batch input files, checked line by line while they stream in, never held whole before a check.

An upload is refused at the first line or byte past a limit: a line that does not validate (400,
with its number), more than `MAX_LINES` lines (400), a line longer than a request body may be
(400), the file past `max_upload_bytes` (413) or past what is left of the consumer's storage quota
(429). The per-line work (JSON, schemas) runs in the ingress's worker processes
(`dispatcher/admission/offload.py`) in pieces of whole lines; the loop keeps only what spans pieces
(line count, unique custom_ids) and RBAC. On a busy machine even short slices of CPU work in the
loop thread made `/healthz` wait (p99 88-190 ms with 2 ms slices at load 9-13 on 2 cores): the
loop thread must stay idle enough that the kernel runs it at once when a request arrives.
Batch creation checks the stored file again with the same rules, the batch's endpoint and the
configuration of that moment (roles may have changed since the upload).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:  # the library declares its callback table for type checkers only
    from python_multipart.multipart import MultipartCallbacks

from dispatcher.admission.identity import Identity
from dispatcher.admission.live_config import Revision
from dispatcher.admission.offload import Offload
from dispatcher.admission.validation import invalid, validate
from dispatcher.errors import InvalidRequest, Refused
from dispatcher.store.file_chunks import FileWriter
from ingress.error_responses import APIError
from schemas.batches import BatchLine, QueuedLine
from schemas.endpoints import BY_PATH

MAX_LINES = 50_000
# A quota does not clear by retrying: the openai SDK honours this header and does not retry the 429.
NO_RETRY = {"x-should-retry": "false"}
_MAX_FIELDS = 8
# One worker-process call per piece: a round trip costs about a millisecond, a piece 10-40 ms of
# validation, and the loop only copies it.
PIECE_BYTES = 512 * 1024  # `purpose` and whatever else a client library adds


def _refused(number: int, message: str, code: str = "invalid_batch_line", status: int = 400) -> APIError:
    return APIError(status, f"line {number}: {message}", code)


# In a worker process (dispatcher/admission/offload.py): the per-byte work of a piece of a file. ----


@dataclass(frozen=True)
class _LineError:
    number: int
    message: str
    code: str = "invalid_batch_line"


@dataclass(frozen=True)
class Piece:
    """What the lines of one piece of a file ask for; the caller checks what spans pieces."""

    lines: list[tuple[int, str]]  # (line number, custom_id) of each non-blank line
    models: dict[tuple[str, str], int]  # (model, url) -> the first line that asks for it
    error: _LineError | None  # the first line that does not validate (the lines before it are listed)


def check_piece(data: bytes, first_number: int, endpoint: str | None, max_line_bytes: int) -> Piece:
    """Validate whole lines of a batch file: each a `BatchLine` whose body fits its endpoint."""
    lines: list[tuple[int, str]] = []
    models: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=first_number):
        if not raw.strip():
            continue
        try:
            if len(raw) > max_line_bytes:
                raise InvalidRequest(f"longer than the {max_line_bytes} bytes a request may have", "")
            line = BatchLine.model_validate_json(raw)
            if endpoint is not None and line.url != endpoint:
                raise InvalidRequest(f"url {line.url} differs from the batch endpoint", "")
            model: str = validate(BY_PATH[line.url].schema, line.body).model  # type: ignore[attr-defined]
        except ValidationError as exc:
            return Piece(lines, models, _LineError(number, invalid(exc).message))
        except InvalidRequest as exc:
            return Piece(lines, models, _LineError(number, exc.message))
        lines.append((number, line.custom_id))
        models.setdefault((model, line.url), number)
    return Piece(lines, models, None)


def queued_piece(data: bytes, first_index: int, template: QueuedLine) -> list[bytes]:
    """The batch-line messages of the (already checked) lines of a piece, indexed from `first_index`."""
    out: list[bytes] = []
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        line = BatchLine.model_validate_json(raw)
        queued = template.model_copy(
            update={
                "index": first_index + len(out),
                "custom_id": line.custom_id,
                "url": line.url,
                "body": line.body,
            }
        )
        out.append(queued.model_dump_json().encode())
    return out


# In the event loop: what spans pieces, and RBAC. ----------------------------------------------------


class LineRules:
    """What the lines of one caller's batch file must satisfy under one configuration revision; the
    per-line validation runs in `offload` (a worker process), pieces of about `PIECE_BYTES`."""

    def __init__(
        self,
        identity: Identity,
        revision: Revision,
        endpoint: str | None,
        max_line_bytes: int,
        offload: Offload,
    ) -> None:
        self._identity = identity
        self._revision = revision
        self._endpoint = endpoint  # None at upload: the batch's endpoint is named only at creation
        self.max_line_bytes = max_line_bytes
        self._offload = offload
        self._models: set[tuple[str, str]] = set()
        self._custom_ids: set[str] = set()
        self.count = 0

    async def check(self, data: bytes, first_number: int) -> None:
        """Check whole lines (`data` ends at a line end or the file's end), or APIError naming a line."""
        piece = await self._offload.run(check_piece, data, first_number, self._endpoint, self.max_line_bytes)
        for number, custom_id in piece.lines:
            if self.count == MAX_LINES:
                raise APIError(400, f"a batch holds at most {MAX_LINES} requests", "invalid_batch_file")
            if custom_id in self._custom_ids:
                raise _refused(number, "custom_id values must be unique within a batch", "invalid_batch_file")
            self._custom_ids.add(custom_id)
            self.count += 1
        for (model, url), number in piece.models.items():
            if (model, url) in self._models:
                continue
            # RBAC before the lookup, as for a direct call: a caller cannot probe for models.
            if not self._revision.authorizer.permits(self._identity.roles, model, "batch"):
                raise _refused(
                    number, f"your roles do not allow batch on the model {model!r}", "permission_denied", 403
                )
            try:
                self._revision.catalog.resolve(model, BY_PATH[url].endpoint)
            except Refused as exc:
                raise APIError(exc.status, f"line {number}: {exc.message}", exc.code, exc.param) from None
            self._models.add((model, url))
        if piece.error is not None:
            raise _refused(piece.error.number, piece.error.message, piece.error.code)

    def check_count(self) -> None:
        if self.count == 0:
            raise APIError(400, f"a batch holds 1 to {MAX_LINES} requests", "invalid_batch_file")


async def file_pieces(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, int]]:
    """(piece, number of its first line): a stored file's chunks cut at line ends."""
    tail, number = b"", 1
    async for chunk in chunks:
        data = tail + chunk
        end = data.rfind(b"\n")
        if end < 0:
            tail = data
            continue
        piece, tail = data[:end], data[end + 1 :]
        yield piece, number
        number += piece.count(b"\n") + 1
    if tail:
        yield tail, number


class JsonlUpload:
    """An uploaded file as it arrives: written to `sink` and cut into pieces of whole lines, each
    checked; refused at the first byte or line past a limit. Memory is at most about one piece."""

    def __init__(self, rules: LineRules, max_bytes: int, quota_left: int, sink: FileWriter) -> None:
        self._rules = rules
        self._max_bytes = max_bytes
        self._quota_left = quota_left
        self._sink = sink
        self._pending = bytearray()  # received, lines not checked yet
        self._number = 1  # the number of the first unchecked line
        self.size = 0

    async def feed(self, data: bytes) -> None:
        if self.size + len(data) > self._max_bytes:
            raise APIError(413, f"files are limited to {self._max_bytes} bytes", "file_too_large")
        if self.size + len(data) > self._quota_left:
            raise APIError(
                429,
                f"this upload would exceed your storage quota ({self._quota_left} bytes left); delete files first",
                "storage_quota_exceeded",
                headers=NO_RETRY,
            )
        self.size += len(data)
        await self._sink.write(data)
        self._pending += data
        if len(self._pending) >= PIECE_BYTES:
            end = self._pending.rfind(b"\n")
            if end >= 0:
                await self._check(end)
            if len(self._pending) > self._rules.max_line_bytes + PIECE_BYTES:
                await self._check(len(self._pending))  # a line too long: refused before its end arrives

    async def _check(self, end: int) -> None:
        data = bytes(self._pending[:end])
        del self._pending[: end + 1]
        await self._rules.check(data, self._number)
        self._number += data.count(b"\n") + 1

    async def finish(self) -> None:
        if self._pending:
            await self._check(len(self._pending))
        self._rules.check_count()


async def read_multipart_upload(request: Request, upload: JsonlUpload) -> tuple[str, str]:
    """Stream a `multipart/form-data` body: the `file` part into `upload`, checked as it arrives.
    Returns the file name and the `purpose` field."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise APIError(400, "send the file as multipart/form-data", "invalid_request")
    fields: dict[str, bytearray] = {}
    state = _PartState()
    try:
        parser = MultipartParser(boundary, state.callbacks(fields))
        async for chunk in request.stream():
            parser.write(chunk)
            if state.file_data:
                data, state.file_data = bytes(state.file_data), bytearray()
                await upload.feed(data)
        parser.finalize()
    except FormParserError:
        # The parser's message quotes bytes of the body: not echoed.
        raise APIError(400, "the multipart form is malformed", "invalid_request") from None
    if not state.saw_file:
        raise APIError(400, "the form has no 'file' part", "invalid_request", "file")
    purpose = bytes(fields.get("purpose", b"")).decode("utf-8", "replace")
    return state.filename or "upload.jsonl", purpose


class _PartState:
    """What the multipart parser's callbacks learn about the part being read."""

    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.name: str | None = None
        self.filename: str | None = None
        self.saw_file = False
        self.file_data = bytearray()

    def callbacks(self, fields: dict[str, bytearray]) -> MultipartCallbacks:
        def on_part_begin() -> None:
            self.name = None

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self.header_field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self.header_value += data[start:end]

        def on_header_end() -> None:
            if bytes(self.header_field).lower() == b"content-disposition":
                _, options = parse_options_header(bytes(self.header_value))
                self.name = options.get(b"name", b"").decode("utf-8", "replace")
                if self.name == "file":
                    self.saw_file = True
                    self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")[:255]
            self.header_field, self.header_value = bytearray(), bytearray()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self.name == "file":
                self.file_data += data[start:end]
            elif self.name is not None:
                if self.name not in fields and len(fields) >= _MAX_FIELDS:
                    raise APIError(400, f"the form has more than {_MAX_FIELDS} fields", "invalid_request")
                value = fields.setdefault(self.name, bytearray())
                if len(value) + end - start > 1024:
                    raise APIError(400, f"the form field {self.name!r} is too long", "invalid_request")
                value += data[start:end]

        return {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        }
