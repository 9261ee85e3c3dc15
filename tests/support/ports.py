"""Loopback ports for the servers the tests start.

``free_port()`` binding port 0 and releasing it races when several test processes run at once
(pytest-xdist workers, or another run of the suite): the kernel hands the same ephemeral port
to whoever asks next, including the source port of any outgoing connection. So every process
takes its ports from a block of its own below the Linux ephemeral range (32768-60999): the
xdist worker ``gwN`` takes the block N places after the run's first block, which is drawn from
the run's id (``PYTEST_XDIST_TESTRUNUID``; without xdist, from the process id), so that workers
of one run never share a block and two runs rarely do. Each candidate is checked free (TCP and
UDP on 127.0.0.1, without SO_REUSEADDR, so a port still in TIME_WAIT is passed over too), and a
process goes round its block before it hands a port out again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import zlib

PORT_LOW = 10000    # above the usual fixed ports of local servers (PostgreSQL 5432, 8000, 8080, ...)
PORT_HIGH = 32768   # the start of the Linux ephemeral range: never handed out here
BLOCK_SIZE = 500    # ports a process goes round before it hands one out again
BLOCKS = (PORT_HIGH - PORT_LOW) // BLOCK_SIZE

_lock = threading.Lock()
_next: int | None = None   # the next candidate's offset in this process's block
_block: tuple[int, int] | None = None  # (pid, first port): recomputed in a forked child


def worker_index() -> int:
    """N of the xdist worker ``gwN``; 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _block_start() -> int:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"
    first = zlib.crc32(run.encode()) % BLOCKS
    return PORT_LOW + ((first + worker_index()) % BLOCKS) * BLOCK_SIZE


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
    global _next, _block
    with _lock:
        if _block is None or _block[0] != os.getpid():
            _block = (os.getpid(), _block_start())
            _next = 0
        assert _next is not None
        start = _block[1]
        for _ in range(BLOCK_SIZE):
            port = start + _next
            _next = (_next + 1) % BLOCK_SIZE
            if _is_free(port):
                return port
    raise RuntimeError(f"no free port in {start}-{start + BLOCK_SIZE - 1}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
