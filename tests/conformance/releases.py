"""The service's side of a firmware update, for the update tests: the real API (the download
endpoint, uvicorn on a free loopback port) over its own SQLite database, where the receiver
under test is registered and provisioned (its MQTT password is the one it downloads with),
tiny releases are uploaded through the service's own upload path (signature, manifest and
files checked), and a rollout has offered each of them to the receiver, as the download
endpoint requires.

Releases (small, so that the suite stays fast; the files are random bytes, not bytecode: a
receiver checks lengths and hashes, it does not run them here):

    good      1.4.0 for esp32-a7670, signed with the fleet's key (the receiver trusts it)
    stranger  1.5.0 for esp32-a7670, signed with a key the receiver does not trust
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from sqlalchemy import select

from fleet_service.app import create_app
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware import bundle, keys
from fleet_service.firmware import service as releases
from fleet_service.firmware.schemas import MANIFEST_NAME, SIGNATURE_NAME
from fleet_service.migrations import upgrade
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.rollouts import service as rollouts
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate, TargetIn
from fleet_service.runtime import Runtime
from fleet_service.scope import RegionScope
from tests.support.ports import free_port

HARDWARE = "esp32-a7670"
# The files of every release: lengths in bytes (about 24 KiB in all).
FILES = {"loa/app.mpy": 9_000, "loa/lib.mpy": 15_000}
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Release:
    release_id: int
    version: str
    url: str              # where its files are: <url>/manifest.json, <url>/<path>
    files_length: int     # the files' bytes
    size: int             # what a receiver fetches: manifest, signature and files

    @property
    def signed_part(self) -> int:
        """Bytes of manifest.json and manifest.sig."""
        return self.size - self.files_length


class ReleaseServer:
    def __init__(self, directory: Path, receiver_id: str) -> None:
        self.directory = directory
        self.receiver_id = receiver_id
        self.password = ""
        self.releases: dict[str, Release] = {}
        self._runtime: Runtime | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = free_port()
        self.fleet_key = ""  # base64 of the fleet's public signing key, what receivers trust

    def start(self) -> ReleaseServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{self.directory / 'loa.db'}"
        upgrade(url)
        runtime = self._runtime = Runtime.from_settings(Settings(
            database_url=url, environment="test"))
        _, _, fleet_public = keys.generate(self.directory / "fleet")
        _, _, stranger_public = keys.generate(self.directory / "stranger")
        self.fleet_key = keys.public_base64(fleet_public)
        with session_scope(runtime.sessions) as session:
            province = registry.create_region(session, RegionCreate(name="Thái Nguyên", level="tỉnh", code="tn"))
            commune = registry.create_region(
                session, RegionCreate(name="Hùng Sơn", level="thị trấn", code="hs", parent_id=province.id))
            station = registry.create_station(session, StationCreate(region_id=commune.id, name="Đài Hùng Sơn"))
            registry.register_receiver(session, ReceiverCreate(id=self.receiver_id, hardware_id="conformance-hw-1",
                                                               station_id=station.id))
            self.password = registry.provision(session, self.receiver_id).mqtt_password
        self._add("good", "1.4.0", self.directory / "fleet.key", fleet_public)
        self._add("stranger", "1.5.0", self.directory / "stranger.key", stranger_public)
        config = uvicorn.Config(create_app(runtime=runtime, mqtt=False), host="127.0.0.1", port=self.port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="release-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the release server (the API) did not start")
            time.sleep(0.05)
        return self

    def _add(self, name: str, version: str, private_key: Path, signer: object) -> None:
        """Build, sign, upload (the service checks it against the signer's key) and offer."""
        directory = self.directory / f"bundle-{name}"
        rng = random.Random(name)
        files = {path: rng.randbytes(length) for path, length in FILES.items()}
        manifest = {"format": 1, "version": version, "hardware": HARDWARE, "min_version": "1.0.0",
                    "mpy_version": "6.3", "total_length": sum(map(len, files.values())),
                    "files": [{"path": p, "length": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                              for p, b in sorted(files.items())]}
        for path, body in files.items():
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).write_bytes(body)
        (directory / MANIFEST_NAME).write_bytes(bundle.canonical_json(manifest))
        bundle.sign(directory, private_key)
        assert self._runtime is not None
        with session_scope(self._runtime.sessions) as session:
            release = releases.upload(session, bundle.pack(directory), [signer],  # type: ignore[list-item]
                                      releases.Actor(None, "kythuat"))
            rollout = rollouts.create_rollout(session, RolloutCreate(
                name=f"{name} {version}", release_id=release.id, target=TargetIn(receiver_ids=[self.receiver_id])),
                rollouts.Actor(None, "admin", RegionScope()))
            target = session.get(RolloutTarget, (rollout.id, self.receiver_id))
            assert target is not None
            target.state = TargetState.OFFERED.value
            release_id = release.id
        signed = len((directory / MANIFEST_NAME).read_bytes()) + len((directory / SIGNATURE_NAME).read_bytes())
        total = int(manifest["total_length"])  # type: ignore[call-overload]
        self.releases[name] = Release(release_id, version,
                                      f"http://127.0.0.1:{self.port}/api/v1/firmware/download/{release_id}",
                                      total, total + signed)

    def served(self, release: Release) -> tuple[int, int]:
        """Bytes the endpoint sent the receiver of ``release``, and in how many requests."""
        assert self._runtime is not None
        with session_scope(self._runtime.sessions) as session:
            row = session.scalars(select(FirmwareDownload).where(
                FirmwareDownload.release_id == release.release_id,
                FirmwareDownload.receiver_id == self.receiver_id)).first()
            return (row.bytes_served, row.requests) if row is not None else (0, 0)

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._runtime is not None:
            self._runtime.close()
