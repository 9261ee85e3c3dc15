"""The virtual receiver's firmware updates: versions from firmware names, the signature and
manifest checks against real signed manifests, the faults as scenario data, the fleet's
trusted keys; and an install deferred by bulletins, through the service's real download
endpoint. The whole protocol of updates is checked in tests/conformance/test_updates.py."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_service.firmware import bundle, keys
from fleet_service.protocol import Event, EventKind, State, StateMessage
from fleet_service.protocol.messages import AckReason, UpdateState, UpdateStatus
from simulators import Fleet, Scenario
from simulators.scenario import Fault, FaultKind
from simulators.update import (
    UpdateFailed,
    UpdateFaults,
    check_manifest,
    check_signature,
    firmware_named,
    running_version,
)
from tests.conformance.releases import ReleaseServer
from tests.simulators.helpers import FAST
from tests.support.waiting import wait_until

FILE = b"\x4d\x06" + bytes(300)


def _manifest(**changes: object) -> bytes:
    value: dict[str, object] = {
        "format": 1, "version": "1.4.0", "hardware": "esp32-a7670", "min_version": "1.0.0", "mpy_version": "6.3",
        "total_length": len(FILE),
        "files": [{"path": "loa/app.mpy", "length": len(FILE), "sha256": hashlib.sha256(FILE).hexdigest()}]}
    value.update(changes)
    return bundle.canonical_json(value)


def _signature(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return bundle.canonical_json({"algorithm": "ed25519", "key_id": keys.key_id(key.public_key()),
                                  "signature": base64.b64encode(key.sign(data)).decode()})


def test_the_version_running_is_read_from_the_firmware_name() -> None:
    assert running_version("loa-sim-1.0.0") == (1, 0, 0)
    assert running_version("loa-fw-12.3.40") == (12, 3, 40)
    assert running_version("dev-build") == (0, 0, 0)
    assert firmware_named("loa-sim-1.0.0", "1.4.0") == "loa-sim-1.4.0"
    assert firmware_named("dev-build", "1.4.0") == "dev-build-1.4.0"


def test_the_signature_is_checked_against_the_trusted_keys_only() -> None:
    fleet, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = (keys.raw_public(fleet.public_key()),)
    data = _manifest()
    check_signature(_signature(fleet, data), data, trusted)
    for signature, manifest in [(_signature(stranger, data), data), (_signature(fleet, data), _manifest(version="1.4.1")),
                                (b"{}", data), (b"not json", data)]:
        with pytest.raises(UpdateFailed) as failed:
            check_signature(signature, manifest, trusted)
        assert failed.value.reason is AckReason.SIGNATURE
    with pytest.raises(UpdateFailed):
        check_signature(_signature(fleet, data), data, ())  # no key built in: nothing verifies


@pytest.mark.parametrize("changes", [
    {"hardware": "esp32-sim7600"}, {"version": "1.5.0"}, {"min_version": "1.2.0"}, {"mpy_version": "5.0"},
    {"format": 2}, {"files": []}])
def test_a_signed_manifest_that_does_not_fit_this_board_fails_as_manifest(changes: dict[str, object]) -> None:
    with pytest.raises(UpdateFailed) as failed:
        check_manifest(_manifest(**changes), version="1.4.0", hardware="esp32-a7670", running=(1, 1, 0))
    assert failed.value.reason is AckReason.MANIFEST


def test_a_manifest_that_fits_is_accepted() -> None:
    manifest = check_manifest(_manifest(), version="1.4.0", hardware="esp32-a7670", running=(1, 0, 0))
    assert [f.path for f in manifest.files] == ["loa/app.mpy"]


def test_update_faults_are_scenario_data() -> None:
    faults = {"rx-1": UpdateFaults(cut_after=4000, cuts=3), "rx-2": UpdateFaults(never_confirm=True),
              "rx-3": UpdateFaults(power_loss_at=UpdateState.INSTALLING, off_seconds=5.0)}
    scenario = Scenario(60.0, (Fault("rx-1", FaultKind.LINK_CUT, 1.0, 2.0),), update_faults=faults)
    again = Scenario.from_json(scenario.to_json())
    assert again.update_faults == faults
    assert Scenario.from_json(Scenario(10.0).to_json()).update_faults == {}
    with pytest.raises(ValueError):
        UpdateFaults(power_loss_at=UpdateState.CONFIRMED)


def test_the_fleet_takes_its_trusted_keys_as_the_service_does() -> None:
    key = Ed25519PrivateKey.generate().public_key()
    raw = keys.raw_public(key)
    fleet = Fleet("127.0.0.1", 1, {"rx-1": "pw"}, update_keys=[keys.public_base64(key), raw, key],
                  hardware="esp32-sim7600")
    assert fleet.config.update_keys == (raw, raw, raw)
    assert fleet.config.hardware == "esp32-sim7600"
    with pytest.raises(ValueError):
        Fleet("127.0.0.1", 1, {"rx-1": "pw"}, update_keys=[b"short"])
    fleet.set_update_faults("rx-1", UpdateFaults(corrupt_at=10))
    assert fleet.status("rx-1").update is None


async def test_a_bulletin_defers_the_install_until_it_ends(make_broker, make_observer, tmp_path) -> None:
    """Emergency bulletins hold the install back (deferred, why playing_emergency, said once
    while one replaces another); once stopped it installs, reboots into 1.4.0 and confirms
    it; the receiver's status says so."""
    rid = "rx-000"
    server = ReleaseServer(tmp_path / "releases", rid).start()
    try:
        broker = make_broker({rid: server.password})
        observer = make_observer(broker)
        fleet = Fleet(broker.host, broker.port, {rid: server.password}, fetch_streams=False,
                      update_keys=[server.fleet_key], update_retry_base=0.1, **FAST)
        await fleet.start()
        try:
            await wait_until(lambda: _booted(observer, rid), 10, what="boot event")
            good = server.releases["good"]
            observer.publish(f"loa/v1/rx/{rid}/cmd", _command("play", "e1", url="http://example.invalid/a.mp3",
                                                              pri="emergency"))
            await wait_until(lambda: fleet.status(rid).playing == "cmd:e1", 10, what="the bulletin plays")
            observer.publish(f"loa/v1/rx/{rid}/cmd", _command("update", "u1", rel=good.release_id, ver=good.version,
                                                              hw="esp32-a7670", url=good.url))
            await wait_until(lambda: "playing_emergency" in _whys(observer, rid), 10, what="deferred (emergency)")
            observer.publish(f"loa/v1/rx/{rid}/cmd", _command("play", "p1", url="http://example.invalid/b.mp3",
                                                              pri="emergency"))
            await wait_until(lambda: fleet.status(rid).playing == "cmd:p1", 10, what="the second bulletin plays")
            observer.publish(f"loa/v1/rx/{rid}/cmd", _command("stop", "s1", pri="emergency"))
            await wait_until(lambda: fleet.status(rid).update == "confirmed", 20, what="confirmed")
            status = fleet.status(rid)
            assert status.firmware == "loa-sim-1.4.0" and status.update_fetched == good.size
        finally:
            await fleet.stop()
    finally:
        server.close()
    states = [s.state.value for s in _updates(observer, rid)]
    assert states.index("deferred") < states.index("installing"), states
    assert "installing" not in states[:states.index("deferred")]
    assert [s.reason for s in _updates(observer, rid) if s.state is UpdateState.DEFERRED] == ["playing_emergency"]
    births = [d.message for m, d in observer.protocol_messages()
              if m.receiver == rid and isinstance(d.message, StateMessage) and d.message.state is State.ONLINE]
    assert [b.firmware for b in births] == ["loa-sim-1.0.0", "loa-sim-1.4.0"]
    assert {b.hardware for b in births} == {"esp32-a7670"}


def _updates(observer, rid: str) -> list[UpdateStatus]:
    return [d.message for m, d in observer.protocol_messages()
            if m.receiver == rid and isinstance(d.message, UpdateStatus)]


def _whys(observer, rid: str) -> list[str | None]:
    return [s.reason for s in _updates(observer, rid)]


def _booted(observer, rid: str) -> bool:
    return any(m.receiver == rid and isinstance(d.message, Event) and d.message.kind is EventKind.BOOT
               for m, d in observer.protocol_messages())


def _command(op: str, cid: str, **fields: object) -> bytes:
    return json.dumps({"v": 1, "id": cid, "op": op, "ts": int(time.time()), "exp": int(time.time()) + 60,
                       **fields}).encode()
