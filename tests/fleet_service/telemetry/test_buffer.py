"""The on-disk buffer: order, durability across restarts, and its bound (oldest dropped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_service.telemetry.buffer import DiskBuffer


def lines(start: int, count: int, width: int = 60) -> bytes:
    return b"".join(f"telemetry,receiver=rx-{i % 7} seq={i}i {1_800_000_000_000_000 + i}".ljust(width).encode()
                    + b"\n" for i in range(start, start + count))


def drain(buffer: DiskBuffer, chunk: int = 1000) -> bytes:
    out = b""
    while buffer:
        data, count = buffer.peek(chunk)
        assert count == data.count(b"\n") > 0
        out += data
        buffer.consume(len(data), count)
    return out


def test_points_come_back_in_order_across_segments_and_segments_are_deleted(tmp_path: Path):
    buffer = DiskBuffer(tmp_path, max_bytes=64 * 1024)  # segments of 4 KiB
    written = b""
    for batch in range(20):
        data = lines(batch * 10, 10)
        assert buffer.append(data, 10) == 0
        written += data
    assert len(list(tmp_path.glob("*.lp"))) > 1
    assert buffer.pending_lines == 200 and buffer.pending_bytes == len(written)
    assert drain(buffer, chunk=777) == written
    assert buffer.pending_lines == 0 and not list(tmp_path.glob("*.lp"))


def test_a_restart_resumes_after_what_was_delivered(tmp_path: Path):
    buffer = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    everything = lines(0, 150)
    buffer.append(everything, 150)
    data, count = buffer.peek(2000)
    buffer.consume(len(data), count)

    reopened = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    assert reopened.pending_lines == 150 - count
    assert drain(reopened) == everything[len(data):]


def test_a_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path):
    buffer = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    buffer.append(lines(0, 5), 5)
    segment = next(tmp_path.glob("*.lp"))
    with segment.open("ab") as f:  # a crash in the middle of an append
        f.write(b"telemetry,receiver=rx-9 seq=")
    reopened = DiskBuffer(tmp_path, max_bytes=64 * 1024)
    assert reopened.pending_lines == 5
    assert drain(reopened) == lines(0, 5)
    reopened.append(lines(5, 1), 1)
    assert drain(reopened) == lines(5, 1)


def test_beyond_the_bound_the_oldest_are_dropped_and_counted(tmp_path: Path):
    bound = 16 * 1024
    buffer = DiskBuffer(tmp_path, max_bytes=bound)  # segments of 1 KiB = 17 lines of 61 bytes
    dropped = 0
    for batch in range(100):
        dropped += buffer.append(lines(batch * 10, 10), 10)
        assert buffer.size <= bound
    assert dropped == buffer.dropped > 0
    assert buffer.pending_lines + dropped == 1000
    kept = drain(buffer)
    # What is left is the newest points, contiguous, ending with the last one appended.
    first = int(kept.split(b" seq=")[1].split(b"i")[0])
    assert kept == lines(first, 1000 - first)
    assert first == dropped


def test_a_batch_larger_than_the_bound_is_dropped_whole(tmp_path: Path):
    buffer = DiskBuffer(tmp_path, max_bytes=1024)
    buffer.append(lines(0, 5), 5)
    assert buffer.append(lines(0, 100), 100) == 100
    assert buffer.dropped == 100 and buffer.pending_lines == 5


def test_a_bound_too_small_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="too small"):
        DiskBuffer(tmp_path, max_bytes=100)
