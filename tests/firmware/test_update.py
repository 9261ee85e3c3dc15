"""Firmware updates (docs/protocol.md, "Firmware updates (1.2)") on the real firmware: a
micropython process with a 160 KiB heap running version 0.1.0 from slot a gets an ``update``
command for a release built from firmware/ by ``loa firmware build`` (version 1.4.0) and signed
with a test key; it fetches the release from a Range-capable HTTP server with its own login,
installs it in slot b on trial, and 1.4.0 confirms itself; or it fails, or rolls back, and the
receiver always ends running a good version and saying which."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from fleet_service.firmware import bundle, keys
from fleet_service.firmware.cli import FIRMWARE_SOURCE
from fleet_service.protocol import command_topic, decode
from tests.firmware.conftest import Device, Observer, device_config, give_modem, wait_for
from tests.support.mosquitto_production import ProductionBroker
from tests.support.release_server import ReleaseServer
from tests.support.tcp_relay import TcpRelay

HARDWARE = "esp32-a7670"
NEW = "1.4.0"
OLD_FW = "loa-fw-0.1.0"
NEW_FW = "loa-fw-" + NEW
# What a receiver needs from connecting to its first report, with margin for a loaded machine.
ONLINE_S = 20


def _source(directory: Path, version: str) -> Path:
    shutil.copytree(FIRMWARE_SOURCE / "loa", directory / "loa", ignore=shutil.ignore_patterns("__pycache__"))
    init = directory / "loa" / "__init__.py"
    text, count = re.subn(r'^VERSION = "[^"]*"$', f'VERSION = "{version}"', init.read_text(), flags=re.MULTILINE)
    assert count == 1
    init.write_text(text)
    return directory


@dataclass(frozen=True)
class Release:
    directory: Path      # release 1.4.0 built from firmware/, signed with the trusted key
    key: str             # the trusted public key, base64 (the receivers' release_key)
    private: Path        # the trusted private key
    stranger: Path       # a private key nobody trusts

    def variant(self, target: Path, *, signer: Path | None = None, **manifest: object) -> Path:
        """A copy, its manifest changed by ``manifest`` and signed again by ``signer``."""
        shutil.copytree(self.directory, target)
        if manifest:
            value = {**json.loads((target / bundle.MANIFEST_NAME).read_bytes()), **manifest}
            (target / bundle.MANIFEST_NAME).write_bytes(bundle.canonical_json(value))
        if manifest or signer is not None:
            bundle.sign(target, signer or self.private)
        return target


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """Release 1.4.0 built from firmware/ (installs over 0.1.0 and later), signed with a test
    key, shared by every scenario."""
    base = tmp_path_factory.mktemp("release")
    out = base / "bundle"
    bundle.build(_source(base / "src", NEW), out, hardware=HARDWARE, min_version="0.1.0")
    private, _, key = keys.generate(base / "trusted")
    stranger, _, _ = keys.generate(base / "stranger")
    bundle.sign(out, private)
    return Release(out, keys.public_base64(key), private, stranger)


def bundle_bytes(directory: Path) -> int:
    manifest, _ = bundle.read_manifest(directory)
    return manifest.total_length


class Service:
    """Publishes commands to one receiver as the service does."""

    def __init__(self, broker: ProductionBroker, rid: str) -> None:
        self.topic = command_topic(rid)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"service-{rid}")
        self.client.username_pw_set(broker.service_username, broker.service_password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def update(self, cid: str, url: str, *, hw: str = HARDWARE, ver: str = NEW, **extra: object) -> None:
        now = int(time.time())
        cmd = {"v": 1, "id": cid, "op": "update", "ts": now, "exp": now + 3600, "rel": 7, "ver": ver, "hw": hw,
               "url": url, **extra}
        self.client.publish(self.topic, json.dumps(cmd), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Rig:
    """One receiver (its flash, its process), the release server, an observer and the service."""

    def __init__(self, broker: ProductionBroker, root: Path, rid: str, release: Release, *,
                 release_dir: Path | None = None, cut_every: int = 0, mqtt_port: int | None = None,
                 **config: object) -> None:
        password = "pw-" + rid
        broker.accounts.add_receiver(rid, password)
        self.rid = rid
        self.server = ReleaseServer(release_dir or release.directory, {rid: password}, cut_every=cut_every).__enter__()
        cfg = device_config(broker, rid, password, release_key=release.key, **config)
        if mqtt_port is not None:
            cfg["port"] = mqtt_port
        self.device = Device(root, cfg)
        self.observer = Observer(broker.host, broker.port, broker.service_username, broker.service_password,
                                 rid).start()
        self.service = Service(broker, rid)

    def start(self) -> Rig:
        self.device.start()
        return self

    def sim(self, **values: object) -> None:
        (self.device.root / "sim.json").write_text(json.dumps(values))

    def online(self, fw: str, session: int | None = None, timeout: float = ONLINE_S) -> dict:
        def born(m: dict) -> bool:
            return m["state"] == "online" and m.get("fw") == fw and (session is None or m["session"] == session)

        return self.observer.wait("state", born, timeout=timeout)[-1]

    def status(self, cid: str, st: str, timeout: float = ONLINE_S) -> dict:
        return self.observer.wait("update", lambda m: m["id"] == cid and m["st"] == st, timeout=timeout)[-1]

    def ack(self, cid: str, st: str, timeout: float = ONLINE_S) -> dict:
        return self.observer.wait("ack", lambda m: m["id"] == cid and m["st"] == st, timeout=timeout)[-1]

    def reset_and_restart(self, expect: int | None = 0, timeout: float = ONLINE_S) -> None:
        """The board resets (the process exits): power it up again."""
        code = self.device.wait(timeout)
        if expect is not None:
            assert code == expect, self.device.output
        self.device.start()

    def all_decode(self) -> None:
        for m in self.observer.messages:
            if f"/{self.rid}/" in m.topic and not m.topic.endswith("/cmd"):
                decode(m.topic, m.payload, max_bytes=8192)

    def close(self) -> None:
        self.device.close()
        self.observer.close()
        self.service.close()
        self.server.__exit__()


@pytest.fixture
def rigs(broker: ProductionBroker, tmp_path: Path) -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()
        print(f"--- {rig.rid}:\n{rig.device.output}")  # shown when the test failed


def test_an_update_downloads_resumes_after_cuts_installs_and_confirms(broker, tmp_path, release, rigs) -> None:
    total = bundle_bytes(release.directory)
    # Every answer is cut after 5,000 bytes: the larger files come in several resumed pieces.
    rig = Rig(broker, tmp_path / "flash", "fw-up", release, cut_every=5000)
    rigs.append(rig)
    rig.start()
    birth = rig.online(OLD_FW)
    assert birth["hw"] == HARDWARE
    rig.service.update("up-1", rig.server.url)
    rig.ack("up-1", "accepted")
    rig.status("up-1", "rebooting")
    statuses = [m["st"] for m in rig.observer.find("update", lambda m: m["id"] == "up-1")]
    assert statuses[:2] == ["offered", "downloading"]
    assert statuses[-4:] == ["downloaded", "verified", "installing", "rebooting"]
    percents = [m["pct"] for m in rig.observer.find("update", lambda m: m["st"] == "downloading")]
    assert len(percents) >= 10 and percents == sorted(percents) and percents[-1] == 100
    cuts = [r for r in rig.server.requests if r.start > 0]
    assert len(cuts) >= 3, rig.server.requests
    fetched = rig.status("up-1", "rebooting")["got"]
    signed = (release.directory / "manifest.json").stat().st_size + (release.directory / "manifest.sig").stat().st_size
    assert fetched - signed - total <= total * 0.05  # bytes sent again after the cuts: at most 5 %
    assert rig.device.read_json("slots.json") == {"active": "a", "trial": "b"}

    rig.reset_and_restart()
    rig.online(NEW_FW)
    rig.status("up-1", "confirmed")
    rig.ack("up-1", "done")
    assert rig.device.read_json("slots.json") == {"active": "b"}
    assert "slot b trial" in rig.device.output
    # A repeated delivery is answered, never carried out again.
    rig.service.update("up-1", rig.server.url)
    dup = rig.observer.wait("ack", lambda m: m["id"] == "up-1" and m.get("dup"))[-1]
    assert dup["st"] == "done"
    assert rig.device.stop() == 0
    rig.all_decode()


def _stays_on_the_old_version(rig: Rig, cid: str, why: str) -> None:
    """The update failed with ``why``: nothing switched, 0.1.0 runs on and says so."""
    rig.status(cid, "failed")
    assert rig.ack(cid, "failed")["why"] == why
    assert rig.observer.find("update", lambda m: m["id"] == cid)[-1]["why"] == why
    assert not (rig.device.root / "slots.json").exists() or "trial" not in rig.device.read_json("slots.json")
    assert rig.device.stop() == 0
    rig.device.start()
    rig.online(OLD_FW, session=2)
    assert "slot a" in rig.device.output
    assert rig.device.stop() == 0
    rig.all_decode()


def test_a_corrupted_byte_fails_the_hash_and_nothing_switches(broker, tmp_path, release, rigs) -> None:
    bad = release.variant(tmp_path / "bad")
    app = bad / "loa" / "app.mpy"
    data = bytearray(app.read_bytes())
    data[len(data) // 2] ^= 0x01
    app.write_bytes(bytes(data))
    rig = Rig(broker, tmp_path / "flash", "fw-hash", release, release_dir=bad)
    rigs.append(rig)
    rig.start()
    rig.online(OLD_FW)
    rig.service.update("up-h", rig.server.url)
    _stays_on_the_old_version(rig, "up-h", "hash")
    assert not (rig.device.root / "b" / "loa" / "app.mpy").exists()  # the bad file is deleted


def test_a_bad_signature_fails_before_any_file_is_fetched(broker, tmp_path, release, rigs) -> None:
    forged = release.variant(tmp_path / "forged", signer=release.stranger)
    rig = Rig(broker, tmp_path / "flash", "fw-sig", release, release_dir=forged)
    rigs.append(rig)
    rig.start()
    rig.online(OLD_FW)
    rig.service.update("up-s", rig.server.url)
    _stays_on_the_old_version(rig, "up-s", "signature")
    assert {r.path for r in rig.server.requests} == {"manifest.json", "manifest.sig"}


def test_a_release_for_other_hardware_is_refused(broker, tmp_path, release, rigs) -> None:
    other = release.variant(tmp_path / "other", hardware="esp32-sim7600")
    rig = Rig(broker, tmp_path / "flash", "fw-hw", release, release_dir=other)
    rigs.append(rig)
    rig.start()
    rig.online(OLD_FW)
    # The command names another family: refused at once.
    rig.service.update("up-w", rig.server.url, hw="esp32-sim7600")
    assert rig.ack("up-w", "rejected")["why"] == "wrong_hardware"
    # The command says this family, the signed manifest another: refused after the check.
    rig.service.update("up-m", rig.server.url)
    _stays_on_the_old_version(rig, "up-m", "manifest")
    assert {r.path for r in rig.server.requests} == {"manifest.json", "manifest.sig"}


def test_a_new_version_that_cannot_connect_rolls_back_by_itself(broker, tmp_path, release, rigs) -> None:
    with TcpRelay(broker.port) as relay:
        rig = Rig(broker, tmp_path / "flash", "fw-noconn", release, mqtt_port=relay.port, trial_s=5)
        rigs.append(rig)
        rig.start()
        rig.online(OLD_FW)
        rig.service.update("up-n", rig.server.url)
        rig.status("up-n", "rebooting")
        relay.silence()  # the new version finds no broker
        rig.reset_and_restart()
        code = rig.device.wait(ONLINE_S)  # it gives up after trial_s and resets
        assert code == 0, rig.device.output
        assert "slot b trial" in rig.device.output and "no connection within the trial time" in rig.device.output
        relay.resume()
        rig.device.start()
        rig.online(OLD_FW)
        assert rig.status("up-n", "rolled_back")["why"] == "no_connection"
        assert rig.ack("up-n", "failed")["why"] == "rolled_back"
        assert rig.device.read_json("slots.json") == {"active": "a"}
        assert "slot a" in rig.device.output
        assert rig.device.stop() == 0
    rig.all_decode()


def _rig_on_the_4g_link(broker: ProductionBroker, tmp_path: Path, name: str, release: Release,
                        rigs: list[Rig]) -> Rig:
    """A rig whose receiver runs on the ppp link through the simulated modem (give_modem)."""
    rig = Rig(broker, tmp_path / "flash", name, release, ntp="")
    rigs.append(rig)
    cfg = json.loads((rig.device.root / "config.json").read_text())
    give_modem(rig.device.root, cfg)
    (rig.device.root / "config.json").write_text(json.dumps(cfg))
    return rig


def test_an_update_out_of_heap_is_checked_and_downloaded_at_boot_on_the_4g_link(broker, tmp_path, release,
                                                                                 rigs) -> None:
    """The end of the worst case's update on the 4G link (docs/firmware.md, "Memory"; the whole
    of it is python -m tests.firmware.heap_peaks --update --modem): a receiver on the ppp link
    (a simulated modem: loa/ppp.py held, loa/modem.py loaded for each link-up) with the
    largest schedule on flash, reset to make room for an update, checks and downloads it at
    boot in 160 KiB before its receiver is made, resets, then reports it and installs it; the
    new version confirms itself."""
    rig = _rig_on_the_4g_link(broker, tmp_path, "fw-boot4g", release, rigs)
    root = rig.device.root
    url = "http://127.0.0.1:1/live.mp3?pad=" + "x" * 256
    slots = [[f"slot-{i:02}", i * 3600, i * 3600 + 3599, 127, url[:256], 1, 20089, 47482, 70] for i in range(24)]
    (root / "schedule.json").write_text(json.dumps({"ver": 2, "tz": 420, "slots": slots}))
    # As the receiver leaves it when the update ran out of heap with nothing playing.
    (root / "update.json").write_text(json.dumps({
        "id": "up-b", "rel": 7, "ver": NEW, "url": rig.server.url, "jit": 0, "slot": "b", "st": "offered",
        "why": None, "got": 0, "reset": True, "boot": True}))
    rig.start()
    assert rig.device.wait(ONLINE_S) == 0, rig.device.output  # the reset after the steps at boot
    assert "link: ppp up" in rig.device.output and "update: at boot: done" in rig.device.output
    rig.device.start()
    rig.online(OLD_FW)
    assert [rig.status("up-b", st)["st"] for st in ("downloaded", "verified", "rebooting")] == [
        "downloaded", "verified", "rebooting"]
    rig.reset_and_restart()
    rig.online(NEW_FW)
    rig.status("up-b", "confirmed")
    assert rig.ack("up-b", "done")
    assert rig.device.read_json("slots.json") == {"active": "b"}
    assert "MemoryError" not in rig.device.output
    rig.all_decode()


def test_a_modem_reset_during_the_steps_at_boot_is_reported_after_the_next_one(broker, tmp_path, release,
                                                                                rigs) -> None:
    """The link raises modem_reset while an update's steps at boot bring it up (a modem that
    does not answer: the steps fail, the recovery ladder resets its radio): kept in the record
    across the board's reset, the event is sent once the receiver has reported, and the update
    goes on in the receiver (which, on the 4G link at 160 KiB, runs out of heap for the check:
    the steps at boot had their one chance)."""
    rig = _rig_on_the_4g_link(broker, tmp_path, "fw-bootev", release, rigs)
    root = rig.device.root
    # While the file "hung" is there, the modem does not answer AT (five times: every try of
    # the first link-up's sync), then answers everything again.
    main = (root / "main.py").read_text()
    write = "    def write(self, data):\n"
    assert write in main
    (root / "main.py").write_text(main.replace(write, write + (
        "        import os\n"
        "        if data == b'AT\\r' and 'hung' in os.listdir():\n"
        "            n = int(open('hung').read()) - 1\n"
        "            open('hung', 'w').write(str(n))\n"
        "            if not n:\n"
        "                os.remove('hung')\n"
        "            return\n")))
    (root / "hung").write_text("5")
    (root / "update.json").write_text(json.dumps({
        "id": "up-e", "rel": 7, "ver": NEW, "url": rig.server.url, "jit": 0, "slot": "b", "st": "offered",
        "why": None, "got": 0, "reset": True, "boot": True}))
    rig.start()
    assert rig.device.wait(ONLINE_S + 20) == 0, rig.device.output  # the steps at boot gave up, then the reset
    assert "modem: hung (at_timeout), recovery step radio" in rig.device.output
    assert "update: at boot: left to the receiver" in rig.device.output
    assert rig.device.read_json("update.json")["events"][0][1:] == ["modem_reset", "radio:at_timeout"]
    rig.device.start()
    event = rig.observer.wait("event", lambda m: m["kind"] == "modem_reset", timeout=ONLINE_S)[-1]
    assert event["detail"] == "radio:at_timeout"
    rig.observer.wait("update", lambda m: m["id"] == "up-e")  # the update goes on in the receiver
    record = rig.device.read_json("update.json")
    assert isinstance(record, dict) and "events" not in record
    rig.all_decode()


# Where the power goes (the simulated board's checkpoints in loa/update.py and loa/app.py), and
# what the receiver says after it: the new version confirmed, or the old one rolled back.
POWER_LOSS = {
    "downloading": "confirmed",  # half the release in slot b: resumed after the reset
    "verified": "confirmed",     # checked, not installed: checked again, installed
    "marked": "confirmed",       # the trial mark written, the record not yet: 1.4.0 runs on trial
    "rebooting": "confirmed",    # before the goodbye
    "trial": "rolled_back",      # 1.4.0 on trial, before it committed: 0.1.0 again
    "committed": "confirmed",    # slot b active, the update not yet confirmed
}


@pytest.mark.parametrize("step", list(POWER_LOSS))
def test_a_power_loss_at_each_step_leaves_a_working_receiver(broker, tmp_path, release, rigs, step) -> None:
    rig = Rig(broker, tmp_path / "flash", f"fw-pl-{step}", release)
    rigs.append(rig)
    rig.sim(power_loss_at=step)
    rig.start()
    rig.online(OLD_FW)
    rig.service.update("up-p", rig.server.url)
    while True:
        code = rig.device.wait(ONLINE_S)
        if f"sim: power loss at {step}" in rig.device.output:
            break
        assert code == 0, rig.device.output  # the reset into the new version on the way
        rig.device.start()
    assert code == -9
    rig.sim()
    rig.device.start()
    outcome = POWER_LOSS[step]
    if outcome == "confirmed":
        if step in ("downloading", "verified"):
            rig.status("up-p", "rebooting", timeout=ONLINE_S)
            rig.reset_and_restart()
        rig.online(NEW_FW)
        rig.status("up-p", "confirmed")
        rig.ack("up-p", "done")
        assert rig.device.read_json("slots.json") == {"active": "b"}
    else:
        rig.online(OLD_FW)
        assert rig.status("up-p", "rolled_back")["why"] == "reset"
        assert rig.ack("up-p", "failed")["why"] == "rolled_back"
        assert rig.device.read_json("slots.json") == {"active": "a"}
    assert rig.device.stop() == 0
    rig.all_decode()
