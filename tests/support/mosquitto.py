"""Start a private Mosquitto on a free port, with a configuration the test gives."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port, wait_for_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class MosquittoServer:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def mosquitto(directory: Path, config_body: str = "allow_anonymous true\n", port: int | None = None) -> Iterator[MosquittoServer]:
    """``config_body`` is everything but the listener, which is bound to 127.0.0.1:<port>.
    Runs as the current user (``user`` is set to it, so a root test run does not drop to
    ``mosquitto`` and lose access to the test's files)."""
    import getpass

    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"user {getpass.getuser()}\n"
        f"log_dest file {directory / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "persistence false\n"
        + config_body
    )
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = MosquittoServer("127.0.0.1", port, directory, process)
    try:
        try:
            wait_for_port(port, timeout=10)
        except TimeoutError:
            server.stop()
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"mosquitto did not start: {err}\n{server.log}") from None
        yield server
    finally:
        server.stop()
