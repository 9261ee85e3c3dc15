"""Loopback ports for the servers the tests start.

Binding port 0 and releasing it races when several test processes run at once (pytest-xdist
workers, or other runs of the suite on the same machine): the kernel hands the same ephemeral
port to whoever asks next, including the source port of any outgoing connection. So each
process takes its ports from a block of its own below the Linux ephemeral range (32768-60999):
it holds a lock (``flock``) on the block's file in ``$TMPDIR/loa-test-ports/`` for as long as
it lives, so that no two processes, of one run or of two, share a block. The xdist worker
``gwN`` looks first at the block N places after the run's own first block (drawn from the
run's id; without xdist, from the process id). Each candidate is still checked free (TCP and
UDP on 127.0.0.1, without SO_REUSEADDR, so a port in TIME_WAIT is passed over too: programs
that do not use this module may hold ports here), and a process goes round its whole block
before it hands a port out again.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
import time
import zlib
from pathlib import Path

PORT_LOW = 10000    # above the usual fixed ports of local servers (PostgreSQL 5432, 8000, 8080, ...)
PORT_HIGH = 32768   # the start of the Linux ephemeral range: never handed out here
BLOCK_SIZE = 500    # ports a process goes round before it hands one out again
BLOCKS = (PORT_HIGH - PORT_LOW) // BLOCK_SIZE
LOCK_DIR = Path(tempfile.gettempdir()) / "loa-test-ports"

_lock = threading.Lock()
_pid = 0                  # the process the block below belongs to (a forked child takes its own)
_start = 0                # the block's first port
_next = 0                 # the next candidate's offset in the block
_held: int | None = None  # the descriptor holding the block's lock


def worker_index() -> int:
    """N of the xdist worker ``gwN``; 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _claim_block() -> int:
    """The first port of a block no other live process holds (locked until this one ends)."""
    global _held
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"
    first = (zlib.crc32(run.encode()) + worker_index()) % BLOCKS
    try:
        LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
    except OSError:
        return PORT_LOW + first * BLOCK_SIZE  # no lock directory: the free check alone
    for i in range(BLOCKS):
        block = (first + i) % BLOCKS
        try:
            fd = os.open(LOCK_DIR / f"block-{block}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if _held is not None:
            os.close(_held)  # a forked child: the parent's block stays the parent's
        _held = fd
        return PORT_LOW + block * BLOCK_SIZE
    return PORT_LOW + first * BLOCK_SIZE  # every block held: share one, the free check alone


def _is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A loopback port nothing uses now, from this process's own block."""
    global _pid, _start, _next
    with _lock:
        if _pid != os.getpid():
            _pid, _start, _next = os.getpid(), _claim_block(), 0
        for _ in range(BLOCK_SIZE):
            port = _start + _next
            _next = (_next + 1) % BLOCK_SIZE
            if _is_free(port):
                return port
    raise RuntimeError(f"no free port in {_start}-{_start + BLOCK_SIZE - 1}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
