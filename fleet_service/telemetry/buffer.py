"""A bounded, append-only on-disk queue of line protocol, for telemetry InfluxDB did not take.

The directory holds numbered segment files (``000000000001.lp`` ...), one point per line,
each append fsynced, and ``cursor``: how far the oldest segment has been delivered (so a
restart resends nothing). Bytes are appended to the newest segment and read from the oldest;
a fully delivered segment is deleted. Beyond the bound the *oldest* segments are deleted
whole (see docs/telemetry.md for why the oldest).

Not thread-safe: one writer thread owns it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".lp"
CURSOR = "cursor"
# A segment is at most this fraction of the bound: dropping whole oldest segments then
# never throws away more than 1/16 of what the buffer may hold.
SEGMENTS_PER_BOUND = 16
# ... and at most this large: replay reads one segment's remainder at a time.
SEGMENT_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class Segment:
    number: int
    path: Path
    size: int    # bytes in the file
    lines: int   # points in the file
    offset: int = 0      # bytes already delivered (oldest segment only)
    delivered: int = 0   # points already delivered

    @property
    def pending_lines(self) -> int:
        return self.lines - self.delivered


class DiskBuffer:
    def __init__(self, directory: Path | str, max_bytes: int) -> None:
        if max_bytes < 1024:
            raise ValueError(f"telemetry buffer bound {max_bytes} bytes is too small (at least 1024)")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_max = max(1024, min(SEGMENT_MAX_BYTES, max_bytes // SEGMENTS_PER_BOUND))
        self.segments: list[Segment] = []
        self.dropped = 0  # points deleted beyond the bound, since start
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open_existing()

    # --- what is there ------------------------------------------------------------------------

    @property
    def pending_lines(self) -> int:
        return sum(s.pending_lines for s in self.segments)

    @property
    def pending_bytes(self) -> int:
        return sum(s.size - s.offset for s in self.segments)

    @property
    def size(self) -> int:
        """Bytes on disk (what the bound counts)."""
        return sum(s.size for s in self.segments)

    def __bool__(self) -> bool:
        return any(s.size > s.offset for s in self.segments)

    def _open_existing(self) -> None:
        numbers = sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())
        for number in numbers:
            path = self._path(number)
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a write torn by a crash: the partial line never counted
                log.warning("telemetry buffer %s: dropping %d bytes of a torn last line", path, len(data) - end)
                with path.open("r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            self.segments.append(Segment(number, path, end, data.count(b"\n", 0, end)))
        cursor = self.directory / CURSOR
        if cursor.exists() and self.segments:
            try:
                number, offset = (int(x) for x in cursor.read_text().split())
            except ValueError:
                number, offset = -1, 0
            oldest = self.segments[0]
            if number == oldest.number and 0 <= offset <= oldest.size:
                data = oldest.path.read_bytes()[:offset]
                oldest.offset, oldest.delivered = offset, data.count(b"\n")
        # Segments that held only delivered points.
        while self.segments and self.segments[0].size == self.segments[0].offset and len(self.segments) > 1:
            self._delete_oldest()
        if self.segments:
            log.info("telemetry buffer %s: %d points (%d bytes) waiting from before the restart",
                     self.directory, self.pending_lines, self.pending_bytes)

    # --- append -------------------------------------------------------------------------------

    def append(self, lines: bytes, count: int) -> int:
        """Append ``count`` points (newline-terminated) durably. Returns how many points were
        dropped to stay within the bound (older ones, or these if they alone exceed it)."""
        if not lines:
            return 0
        if len(lines) > self.max_bytes:
            self.dropped += count
            return count
        dropped = 0
        current = self.segments[-1] if self.segments else None
        if current is None or current.size + len(lines) > self.segment_max:
            current = self._new_segment()
        while self.size + len(lines) > self.max_bytes and len(self.segments) > 1:
            dropped += self._delete_oldest()
        with current.path.open("ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        current.size += len(lines)
        current.lines += count
        self.dropped += dropped
        return dropped

    def _new_segment(self) -> Segment:
        number = self.segments[-1].number + 1 if self.segments else self._next_number()
        path = self._path(number)
        path.touch()
        self._fsync_directory()
        segment = Segment(number, path, 0, 0)
        self.segments.append(segment)
        return segment

    def _next_number(self) -> int:
        cursor = self.directory / CURSOR
        try:
            return int(cursor.read_text().split()[0]) + 1
        except (OSError, ValueError, IndexError):
            return 1

    # --- replay -------------------------------------------------------------------------------

    def peek(self, max_bytes: int) -> tuple[bytes, int]:
        """The oldest undelivered points, whole lines, about ``max_bytes`` (at least one line)."""
        for segment in self.segments:
            if segment.offset < segment.size:
                with segment.path.open("rb") as f:
                    f.seek(segment.offset)
                    data = f.read(max_bytes)
                    end = data.rfind(b"\n") + 1
                    if end == 0:  # one line longer than max_bytes
                        data += f.readline()
                        end = len(data)
                return data[:end], data.count(b"\n", 0, end)
        return b"", 0

    def consume(self, nbytes: int, count: int) -> None:
        """Mark what ``peek`` returned as delivered (or given up), and remember it on disk."""
        segment = next(s for s in self.segments if s.offset < s.size)
        segment.offset += nbytes
        segment.delivered += count
        if segment.offset >= segment.size:
            self._delete_oldest()
        else:
            self._write_cursor(segment.number, segment.offset)

    # --- internals ----------------------------------------------------------------------------

    def _delete_oldest(self) -> int:
        """Delete the oldest segment; returns its undelivered points."""
        segment = self.segments.pop(0)
        segment.path.unlink(missing_ok=True)
        following = self.segments[0] if self.segments else None
        self._write_cursor(following.number if following else segment.number, following.offset if following else 0)
        return segment.pending_lines

    def _write_cursor(self, number: int, offset: int) -> None:
        temporary = self.directory / (CURSOR + ".tmp")
        with temporary.open("w") as f:
            f.write(f"{number} {offset}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.directory / CURSOR)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SUFFIX}"
