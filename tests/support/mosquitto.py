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
    config_path: Path | None = None

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

    def restart(self) -> None:
        """Stop the broker and start it again with the same configuration and port."""
        if self.config_path is None:
            raise RuntimeError("this server was not started from a config file")
        self.stop()
        self.process = _launch(self.config_path, self.port, self.directory)


@contextmanager
def mosquitto(directory: Path, config_body: str = "allow_anonymous true\n", port: int | None = None) -> Iterator[MosquittoServer]:
    """``config_body`` is everything but the listener, which is bound to 127.0.0.1:<port>.
    Runs as the current user (``user`` is set to it, so a root test run does not drop to
    ``mosquitto`` and lose access to the test's files)."""
    import getpass

    port = port or free_port()
    config = (
        f"listener {port} 127.0.0.1\n"
        f"user {getpass.getuser()}\n"
        f"log_dest file {directory / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "persistence false\n"
        + config_body
    )
    with mosquitto_with_config(directory, config, port) as server:
        yield server


@contextmanager
def mosquitto_with_config(directory: Path, config: str, port: int) -> Iterator[MosquittoServer]:
    """Run Mosquitto with ``config`` written verbatim to ``directory/mosquitto.conf``; ``port``
    is the listener the config opens (waited for before yielding). The server can be
    ``restart()``ed with the same config, e.g. to check what survives a restart."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(config)
    server = MosquittoServer("127.0.0.1", port, directory, _launch(conf, port, directory), conf)
    try:
        yield server
    finally:
        server.stop()


def _launch(conf: Path, port: int, directory: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=10)
    except TimeoutError:
        if process.poll() is None:
            process.kill()
        process.wait()
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        log_file = directory / "mosquitto.log"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        raise RuntimeError(f"mosquitto did not start: {err}\n{log}") from None
    return process


def write_password_file(path: Path, users: dict[str, str]) -> None:
    """A Mosquitto password file holding exactly ``users`` (username -> password)."""
    path.unlink(missing_ok=True)
    path.touch()
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, capture_output=True)
