"""Firmware updates (protocol 1.2) as a virtual receiver carries them out: the job a receiver
keeps while an update is under way (and after it, in its "flash"), the download with resume,
the signature and manifest checks, and the faults tests and benchmarks inject.

The download really goes over HTTP (httpx, the fleet's one client) with the receiver's own
login. Nothing of a release is kept: every byte is hashed as it arrives and dropped, so a
receiver's memory does not grow with the release (10,000 receivers may update at once).
The receiver's states, acknowledgements and reboots are in :mod:`simulators.receiver`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fleet_service.firmware.schemas import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_FILE_BYTES,
    SIGNATURE_NAME,
    Manifest,
    parse_version,
)
from fleet_service.protocol.messages import AckReason, UpdateState

# The bytecode a simulated board loads: .mpy of this major version (MicroPython 1.2x,
# mpy-cross 6.x), as the firmware's own check (docs/protocol.md, step 2).
MPY_MAJOR = 6
# The download status goes out at every this many percent.
PCT_STEP = 10
# A file is hashed (and its progress counted) this many bytes at a time, as a receiver reads
# its socket into a small buffer: a chunk the HTTP client hands over whole is taken in pieces.
PIECE = 4096
# The longest pause between two attempts of a download, however many failed.
RETRY_CAP_S = 60.0
# Why the states of a job that ended by a reset say so (the update status's "why").
NO_CONNECTION = "no_connection"   # the new version did not connect within its trial time
RESET = "reset"                   # the board reset (power) while the new version was on trial
# The last version string of a firmware name: "loa-sim-1.0.0" runs 1.0.0.
_VERSION_AT_END = re.compile(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")


def running_version(firmware: str) -> tuple[int, int, int]:
    """The version a firmware name ends with (0.0.0 if it names none)."""
    found = _VERSION_AT_END.search(firmware)
    return (int(found[1]), int(found[2]), int(found[3])) if found else (0, 0, 0)


def firmware_named(firmware: str, version: str) -> str:
    """The name the same firmware has at ``version``: "loa-sim-1.0.0" at 1.4.0 is "loa-sim-1.4.0"."""
    found = _VERSION_AT_END.search(firmware)
    name = firmware[:found.start()] + version if found else f"{firmware}-{version}"
    return name[-32:]  # a birth's fw is at most 32 characters


@dataclass(frozen=True, slots=True)
class UpdateFaults:
    """Faults in the next update a receiver accepts (then forgotten).

    ``cut_after``/``cuts``: the first ``cuts`` responses that bring a file are cut after
    ``cut_after`` bytes (the download resumes with a Range request). ``corrupt_at``: the byte at
    this offset of the release's files (counted over the files in the manifest's order) arrives
    changed (the file's hash fails). ``never_confirm``: the new version cannot connect, so the
    board goes back to the old one after its trial time. ``power_loss_at``: the power goes when
    the update reaches this state (``downloading``: once ``power_loss_pct`` percent is in),
    and comes back after ``off_seconds``."""

    cut_after: int | None = None
    cuts: int = 1
    corrupt_at: int | None = None
    never_confirm: bool = False
    power_loss_at: UpdateState | None = None
    power_loss_pct: int = 50
    off_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.cut_after is not None and self.cut_after < 0 or self.cuts < 0:
            raise ValueError("cut_after and cuts must be >= 0")
        if self.power_loss_at is not None and self.power_loss_at in (UpdateState.CONFIRMED, UpdateState.FAILED,
                                                                    UpdateState.ROLLED_BACK):
            raise ValueError("power_loss_at is a state an update passes through, not a final one")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = value.value if isinstance(value, UpdateState) else value
        return out

    @classmethod
    def from_dict(cls, value: Mapping[str, object]) -> UpdateFaults:
        args = dict(value)
        if args.get("power_loss_at") is not None:
            args["power_loss_at"] = UpdateState(str(args["power_loss_at"]))
        return cls(**args)  # type: ignore[arg-type]


class UpdateFailed(Exception):
    """The update fails with this reason (the ack's and the status's why)."""

    def __init__(self, reason: AckReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Job:
    """One update on one receiver, from the accepted command to its final state. Kept after
    that, as flash keeps it, until the next update replaces it."""

    __slots__ = ("command_id", "release_id", "version", "firmware", "url", "jitter", "_state", "entered", "pct", "why",
                 "got", "faults", "cuts_left", "task", "trial", "trial_timer", "reported", "ack_pending", "waiter")

    def __init__(self, command_id: str, release_id: int, version: str, firmware: str, url: str, jitter: int,
                 faults: UpdateFaults | None) -> None:
        self.command_id = command_id
        self.release_id = release_id
        self.version = version
        self.firmware = firmware        # the name the new version reports in its births
        self.url = url.rstrip("/")
        self.jitter = jitter
        # Wall-clock time each state was first entered: the update's ground truth, for
        # benchmarks that compare it with what the service recorded.
        self.entered: dict[UpdateState, float] = {}
        self.state = UpdateState.OFFERED
        self.pct: int | None = None
        self.why: str | None = None
        self.got = 0                    # bytes fetched, resumed requests included
        self.faults = faults
        self.cuts_left = faults.cuts if faults is not None and faults.cut_after is not None else 0
        self.task: asyncio.Task[None] | None = None
        self.trial = False              # the new version runs, once, on trial
        self.trial_timer: asyncio.TimerHandle | None = None
        self.reported = False           # the latest status went out
        self.ack_pending = False        # a final outcome decided while offline, for the next birth
        self.waiter: asyncio.Future[None] | None = None  # deferred: set when the broadcast ends

    @property
    def state(self) -> UpdateState:
        return self._state

    @state.setter
    def state(self, value: UpdateState) -> None:
        self._state = value
        if value not in self.entered:
            self.entered[value] = time.time()

    @property
    def cuts_made(self) -> int:
        """Responses cut by the injected faults so far."""
        faults = self.faults
        return faults.cuts - self.cuts_left if faults is not None and faults.cut_after is not None else 0

    @property
    def under_way(self) -> bool:
        return not self.state.final

    def stop(self) -> None:
        """RAM goes (power loss, reset): the task and timers with it."""
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self.trial_timer is not None:
            self.trial_timer.cancel()
            self.trial_timer = None
        self.wake()

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def check_signature(signature_file: bytes, manifest: bytes, trusted: tuple[bytes, ...]) -> None:
    """manifest.sig (``{"algorithm": "ed25519", "key_id", "signature"}``) over the manifest's
    exact bytes, against the public keys the firmware has built in."""
    try:
        value = json.loads(signature_file)
        if not isinstance(value, dict) or value.get("algorithm") != "ed25519":
            raise ValueError("not an ed25519 signature file")
        signature = base64.b64decode(str(value["signature"]), validate=True)
    except (ValueError, KeyError, binascii.Error) as exc:
        raise UpdateFailed(AckReason.SIGNATURE, f"{SIGNATURE_NAME}: {exc}") from None
    for raw in trusted:  # key_id only says which to try first; every trusted key is tried
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, manifest)
            return
        except (InvalidSignature, ValueError):
            continue
    raise UpdateFailed(AckReason.SIGNATURE, "the manifest's signature does not verify with a trusted key")


def check_manifest(data: bytes, *, version: str, hardware: str, running: tuple[int, int, int]) -> Manifest:
    """The signed manifest, installable here: this hardware, the version the command named,
    over the version running (min_version), bytecode this board loads."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise UpdateFailed(AckReason.MANIFEST, f"{MANIFEST_NAME}: {exc.errors()[0]['msg']}") from None
    if manifest.hardware != hardware:
        raise UpdateFailed(AckReason.MANIFEST, f"the manifest is for {manifest.hardware}, this board is {hardware}")
    if manifest.version != version:
        raise UpdateFailed(AckReason.MANIFEST, f"the manifest is version {manifest.version}, the command said {version}")
    if parse_version(manifest.min_version) > running:
        raise UpdateFailed(AckReason.MANIFEST, f"installs over {manifest.min_version} or later only")
    if int(manifest.mpy_version.split(".")[0]) != MPY_MAJOR:
        raise UpdateFailed(AckReason.MANIFEST, f"bytecode {manifest.mpy_version}, this board loads {MPY_MAJOR}.x")
    return manifest


class _Cut(Exception):
    """A cut injected into a response."""


class Download:
    """The files of one release fetched from ``job.url`` into the (simulated) inactive slot:
    each hashed as it streams and dropped. A broken response is resumed with a Range request
    after a pause that doubles with each failure in a row (a response that brought bytes
    starts the count again); after ``retries`` failures in a row the update fails."""

    __slots__ = ("client", "auth", "job", "retries", "retry_base", "total", "done", "progress", "brought")

    def __init__(self, client: httpx.AsyncClient, auth: httpx.Auth, job: Job, *, retries: int, retry_base: float,
                 progress: Callable[[int, int], None]) -> None:
        self.client = client
        self.auth = auth
        self.job = job
        self.retries = retries
        self.retry_base = retry_base
        self.total = 0
        self.done = 0       # bytes of the release's files in the slot
        self.progress = progress
        self.brought = 0    # bytes the latest request brought

    async def small(self, path: str, limit: int) -> bytes:
        """manifest.json or manifest.sig, whole (at most ``limit`` bytes)."""
        parts: list[bytes] = []

        def keep(chunk: bytes) -> None:
            parts.append(chunk)
            if sum(map(len, parts)) > limit:
                raise UpdateFailed(AckReason.MANIFEST, f"{path} is larger than {limit} bytes")

        await self._fetch(path, None, keep, lambda: parts.clear(), cuttable=False)
        return b"".join(parts)

    async def file(self, path: str, length: int, sha256: str) -> None:
        digest = hashlib.sha256()
        start = self.done
        faults = self.job.faults
        corrupt_at = faults.corrupt_at if faults is not None else None

        def take(chunk: bytes) -> None:
            nonlocal digest
            offset = self.done
            if offset - start + len(chunk) > length:
                raise UpdateFailed(AckReason.HASH, f"{path} is longer than the manifest's {length} bytes")
            if corrupt_at is not None and offset <= corrupt_at < offset + len(chunk):
                i = corrupt_at - offset
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
            view = memoryview(chunk)
            for i in range(0, len(view), PIECE):
                piece = view[i:i + PIECE]
                digest.update(piece)
                self.done += len(piece)
                self.progress(self.done, self.total)

        def restart() -> None:  # the server ignored the Range: the file from its start again
            nonlocal digest
            digest = hashlib.sha256()
            self.done = start

        await self._fetch(path, lambda: self.done - start, take, restart, cuttable=True)
        if self.done - start != length or digest.hexdigest() != sha256:
            raise UpdateFailed(AckReason.HASH, f"{path}: length or SHA-256 is not the manifest's")

    async def _fetch(self, path: str, position: Callable[[], int] | None, take: Callable[[bytes], None],
                     restart: Callable[[], None], *, cuttable: bool) -> None:
        """GET ``<url>/<path>`` into ``take``, resumed from ``position()`` after a failure. The
        pause comes after the failed attempt's frame and exception are gone, so that a
        receiver waiting to retry holds none of the bytes or the response it had."""
        url = f"{self.job.url}/{path}"
        failures = 0
        while True:
            try:
                if await self._attempt(url, path, position, take, restart, cuttable=cuttable):
                    return
                error = "the response ended early"
            except (httpx.TransportError, httpx.HTTPStatusError, _Cut) as exc:
                error = str(exc) or type(exc).__name__
            failures = 1 if self.brought else failures + 1
            if failures > self.retries:
                raise UpdateFailed(AckReason.DOWNLOAD, f"{url}: {error}")
            await asyncio.sleep(min(RETRY_CAP_S, self.retry_base * 2 ** (failures - 1)))

    async def _attempt(self, url: str, path: str, position: Callable[[], int] | None, take: Callable[[bytes], None],
                       restart: Callable[[], None], *, cuttable: bool) -> bool:
        """One request; True if it brought the rest of the file (``self.brought``: its bytes)."""
        job = self.job
        offset = position() if position is not None else 0
        if position is None:
            restart()
        headers = {"Range": f"bytes={offset}-"} if offset else None
        self.brought = 0
        async with self.client.stream("GET", url, auth=self.auth, headers=headers) as response:
            status = response.status_code
            if status >= 500:
                raise httpx.HTTPStatusError(f"{status}", request=response.request, response=response)
            if status == 416:
                raise UpdateFailed(AckReason.HASH, f"{path} is shorter than the manifest says")
            if status not in (200, 206):
                raise UpdateFailed(AckReason.DOWNLOAD, f"{url} answered {status}")
            if offset and status == 200:
                restart()
            cut_at = job.faults.cut_after if cuttable and job.cuts_left and job.faults is not None else None
            async for chunk in response.aiter_raw():
                # Strictly beyond: a cut that fell on the file's last byte would leave nothing to
                # resume, and the Range request past the end would be answered 416.
                if cut_at is not None and self.brought + len(chunk) > cut_at:
                    chunk = chunk[:cut_at - self.brought]
                    job.cuts_left -= 1
                    cut = _Cut(f"cut after {cut_at} bytes")
                else:
                    cut = None
                job.got += len(chunk)
                self.brought += len(chunk)
                if chunk:
                    take(chunk)
                if cut is not None:
                    raise cut
            length = response.headers.get("content-length")
        return position is None or length is None or self.brought >= int(length)


async def fetch_release(client: httpx.AsyncClient, auth: httpx.Auth, job: Job, *, trusted: tuple[bytes, ...],
                        hardware: str, running: tuple[int, int, int], retries: int, retry_base: float,
                        on_verified_manifest: Callable[[Manifest], None],
                        progress: Callable[[int, int], None]) -> None:
    """Steps 2 and 3 of docs/protocol.md's update: manifest and signature, checked before
    anything else is fetched, then every file, checked as it streams."""
    download = Download(client, auth, job, retries=retries, retry_base=retry_base, progress=progress)
    manifest_data = await download.small(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    signature = await download.small(SIGNATURE_NAME, MAX_SIGNATURE_FILE_BYTES)
    check_signature(signature, manifest_data, trusted)
    manifest = check_manifest(manifest_data, version=job.version, hardware=hardware, running=running)
    download.total = manifest.total_length
    on_verified_manifest(manifest)
    # Only what the files need is kept while they download (the parsed manifest is about 1 KB
    # a file, the tuples a tenth of that).
    files = [(entry.path, entry.length, entry.sha256) for entry in manifest.files]
    del manifest
    for path, length, sha256 in files:
        await download.file(path, length, sha256)
