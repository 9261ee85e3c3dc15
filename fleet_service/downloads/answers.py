"""What a download request is answered, whichever server answers it: the API's route
(endpoints.py) or the download listener (listener.py). Both take their status, headers and
bytes from here, so they cannot answer the same request differently."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from fleet_service.errors import LoaError, error_body

# The path both serve: <this><release id>/<file path>.
DOWNLOAD_PATH = "/api/v1/firmware/download/"
FILE_TYPE = "application/octet-stream"
ERROR_TYPE = "application/json"

UNSATISFIABLE = (-1, -1)
# One range of bytes: "bytes=100-199", "bytes=100-", "bytes=-100" (the last 100).
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", re.ASCII | re.IGNORECASE)


def byte_range(header: str, length: int) -> tuple[int, int] | None:
    """The one range ``header`` asks of a file of ``length`` bytes as (first, end), end
    excluded; ``UNSATISFIABLE`` for one that starts beyond the end; None for a header to ignore
    (malformed, another unit, several ranges), which the whole file answers (RFC 9110 14.2)."""
    found = _RANGE.fullmatch(header)
    if found is None:
        return None
    first_text, last_text = found.groups()
    if not first_text:  # the last N bytes
        if not last_text:
            return None
        suffix = int(last_text)
        return UNSATISFIABLE if suffix == 0 or length == 0 else (max(0, length - suffix), length)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= length:
        return UNSATISFIABLE
    return first, min(length, int(last_text) + 1) if last_text else length


@dataclass(frozen=True, slots=True)
class FilePart:
    """The answer to a request for a file: its status (200, 206 or 416), its headers (besides
    content-type and content-length) and the bytes ``content[first:end]`` it carries."""

    status: int
    headers: tuple[tuple[str, str], ...]
    first: int
    end: int


def file_part(sha256: str, length: int, range_header: str | None, if_range: str | None) -> FilePart:
    """The whole file or the one range asked for, with the file's SHA-256 as a strong ETag so
    that a resumed download can say which file it holds (``If-Range``)."""
    etag = f'"{sha256}"'
    # A Range for another version of the file (If-Range) is answered with the whole file.
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        asked = byte_range(range_header, length)
        if asked == UNSATISFIABLE:
            return FilePart(416, (("accept-ranges", "bytes"), ("etag", etag), ("content-range", f"bytes */{length}")),
                            0, 0)
        if asked is not None:
            first, end = asked
            return FilePart(206, (("accept-ranges", "bytes"), ("etag", etag),
                                  ("content-range", f"bytes {first}-{end - 1}/{length}")), first, end)
    return FilePart(200, (("accept-ranges", "bytes"), ("etag", etag)), 0, length)


def basic_login(authorization: str | None) -> tuple[str | None, str | None]:
    """(user name, password) of an ``Authorization: Basic …`` header, read as FastAPI's
    HTTPBasic reads it for the API's route; (None, None) for none or another scheme, and for
    one that cannot be read (which the route refuses with 401 as well)."""
    scheme, _, param = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not param:
        return None, None
    try:
        username, separator, password = base64.b64decode(param).decode("ascii").partition(":")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None, None
    return (username, password) if separator else (None, None)


def error_json(error: LoaError) -> bytes:
    """The body of an error, as the API's error handler writes it (fleet_service/errors.py)."""
    return json.dumps(error_body(error), ensure_ascii=False, separators=(",", ":")).encode()
