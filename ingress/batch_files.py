"""Batch input files, checked line by line while they stream in, never held whole before a check.

An upload is refused at the first line or byte past a limit: a line that does not validate (400,
with its number), more than `MAX_LINES` lines (400), a line longer than a request body may be
(400), the file past `max_upload_bytes` (413) or past what is left of the consumer's storage quota
(429). Lines are checked in slices (`dispatcher/slices.py`): a 50 MB file never stalls the loop.
Batch creation checks the stored file again with the same rules, the batch's endpoint and the
configuration of that moment (roles may have changed since the upload).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from fastapi import Request
from pydantic import ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

from dispatcher.admission.identity import Identity
from dispatcher.admission.live_config import Revision
from dispatcher.admission.validation import invalid, validate
from dispatcher.errors import InvalidRequest, Refused
from dispatcher.slices import Slices
from ingress.errors import APIError
from schemas.batches import BatchLine
from schemas.endpoints import BY_PATH

MAX_LINES = 50_000
# A quota does not clear by retrying: the openai SDK honours this header and does not retry the 429.
NO_RETRY = {"x-should-retry": "false"}
_MAX_FIELDS = 8  # `purpose` and whatever else a client library adds


def _refused(number: int, message: str, code: str = "invalid_batch_line", status: int = 400) -> APIError:
    return APIError(status, f"line {number}: {message}", code)


class LineRules:
    """What every line of one caller's batch file must satisfy under one configuration revision."""

    def __init__(self, identity: Identity, revision: Revision, endpoint: str | None, max_line_bytes: int):
        self._identity = identity
        self._revision = revision
        self._endpoint = endpoint  # None at upload: the batch's endpoint is named only at creation
        self.max_line_bytes = max_line_bytes
        self._models: set[tuple[str, str]] = set()
        self._custom_ids: set[str] = set()
        self.count = 0

    def check(self, number: int, raw: bytes) -> BatchLine | None:
        """The line, None for a blank one, or APIError naming the line."""
        if not raw.strip():
            return None
        if len(raw) > self.max_line_bytes:
            raise _refused(number, f"longer than the {self.max_line_bytes} bytes a request may have")
        if self.count == MAX_LINES:
            raise APIError(400, f"a batch holds at most {MAX_LINES} requests", "invalid_batch_file")
        try:
            line = BatchLine.model_validate_json(raw)
            if self._endpoint is not None and line.url != self._endpoint:
                raise _refused(number, f"url {line.url} differs from the batch endpoint")
            spec = BY_PATH[line.url]
            model: str = validate(spec.schema, line.body).model  # type: ignore[attr-defined]
            if (model, line.url) not in self._models:
                # RBAC before the lookup, as for a direct call: a caller cannot probe for models.
                if not self._revision.authorizer.permits(self._identity.roles, model, "batch"):
                    raise _refused(
                        number,
                        f"your roles do not allow batch on the model {model!r}",
                        "permission_denied",
                        403,
                    )
                self._revision.catalog.resolve(model, spec.endpoint)
                self._models.add((model, line.url))
        except ValidationError as exc:
            raise _refused(number, invalid(exc).message) from None
        except InvalidRequest as exc:
            raise _refused(number, exc.message) from None
        except Refused as exc:
            raise APIError(exc.status, f"line {number}: {exc.message}", exc.code, exc.param) from None
        if line.custom_id in self._custom_ids:
            raise _refused(number, "custom_id values must be unique within a batch", "invalid_batch_file")
        self._custom_ids.add(line.custom_id)
        self.count += 1
        return line


def split_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) without copying the whole file into a list first."""
    start, number = 0, 0
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end
        number += 1
        yield number, content[start:end]
        start = end + 1


async def checked_lines(content: bytes, rules: LineRules) -> AsyncIterator[BatchLine]:
    """Every non-blank line of a stored file, checked, in slices."""
    slices = Slices()
    for number, raw in split_lines(content):
        line = rules.check(number, raw)
        if line is not None:
            yield line
        await slices.tick()
    if rules.count == 0:
        raise APIError(400, f"a batch holds 1 to {MAX_LINES} requests", "invalid_batch_file")


class JsonlUpload:
    """An uploaded file as it arrives: split into lines, each checked; refused at the first byte or
    line past a limit. Memory is the file so far plus at most one partial line."""

    def __init__(self, rules: LineRules, max_bytes: int, quota_left: int) -> None:
        self._rules = rules
        self._max_bytes = max_bytes
        self._quota_left = quota_left
        self._partial = b""
        self._number = 0
        self._slices = Slices()
        self.content = bytearray()

    async def feed(self, data: bytes) -> None:
        if len(self.content) + len(data) > self._max_bytes:
            raise APIError(413, f"files are limited to {self._max_bytes} bytes", "file_too_large")
        if len(self.content) + len(data) > self._quota_left:
            raise APIError(
                429,
                f"this upload would exceed your storage quota ({self._quota_left} bytes left); delete files first",
                "storage_quota_exceeded",
                headers=NO_RETRY,
            )
        self.content += data
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            await self._line(raw)
        if len(self._partial) > self._rules.max_line_bytes:
            await self._line(self._partial)  # refused as too long, without waiting for its end

    async def _line(self, raw: bytes) -> None:
        self._number += 1
        self._rules.check(self._number, raw)
        await self._slices.tick()

    async def finish(self) -> bytes:
        if self._partial:
            await self._line(self._partial)
        if self._rules.count == 0:
            raise APIError(400, f"a batch file holds 1 to {MAX_LINES} requests", "invalid_batch_file")
        return bytes(self.content)


async def read_multipart_upload(request: Request, upload: JsonlUpload) -> tuple[str, str]:
    """Stream a `multipart/form-data` body: the `file` part into `upload`, checked as it arrives.
    Returns the file name and the `purpose` field."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise APIError(400, "send the file as multipart/form-data", "invalid_request")
    fields: dict[str, bytearray] = {}
    state = _PartState()
    parser = MultipartParser(boundary, state.callbacks(fields))
    async for chunk in request.stream():
        parser.write(chunk)
        if state.file_data:
            data, state.file_data = bytes(state.file_data), bytearray()
            await upload.feed(data)
    parser.finalize()
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

    def callbacks(self, fields: dict[str, bytearray]) -> dict[str, object]:
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
