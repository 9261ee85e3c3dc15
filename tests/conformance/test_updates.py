"""Firmware updates (protocol 1.2), seen from the broker, with the service's real download
endpoint serving real signed releases (tests/conformance/releases.py): the whole way to a
confirmed new version; a download cut several times and resumed; a corrupted byte; a release
signed by a key the receiver does not trust; the command's refusals; a new version that never
connects; a power loss at a step; an install deferred while a slot plays."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet_service.protocol import AckStatus, EventKind, State, StateMessage, Telemetry
from fleet_service.protocol.messages import AckReason, StateReason, UpdateState, UpdateStatus
from tests.conformance.bench import (
    CONNECT_DEADLINE,
    UPDATE_DEADLINE,
    UPDATE_RETRY_BASE,
    UPDATE_TRIAL_S,
    Bench,
    clear_of_midnight,
    command,
    now,
    slot,
)
from tests.conformance.conftest import RECEIVER_ID, _spec
from tests.conformance.driver import ReceiverDriver
from tests.conformance.releases import FILES, HARDWARE, Release, ReleaseServer
from tests.conformance.sntp import SntpServer
from tests.conformance.wire import Observer, Rules, Seen
from tests.support.mosquitto_production import ProductionBroker
from tests.support.stream_server import StreamServer

# The receivers under test run 1.0.0 (the simulator's loa-sim-1.0.0): the releases are newer.
OTHER_HARDWARE = "esp32-sim7600"
# A resumed download fetches at most this share more than the release (what the 4G link costs).
RESUME_OVERHEAD = 1.05
# After a failure, how long nothing more may happen (no install, no reboot).
QUIET_S = 1.5
# The slot an update is offered in: longer than any download; the test cuts it short.
LONG_SLOT_S = 300.0


@pytest.fixture(scope="module")
def release_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReleaseServer]:
    server = ReleaseServer(tmp_path_factory.mktemp("releases"), RECEIVER_ID).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def releases(receiver_impl: str, driver: ReceiverDriver, request: pytest.FixtureRequest) -> ReleaseServer:
    """The release server, once the implementation is known to carry out updates."""
    reason = getattr(driver, "updates_unsupported", None)
    if reason:
        pytest.skip(f"the {receiver_impl} implementation: {reason}")
    return request.getfixturevalue("release_server")


@pytest.fixture
async def update_bench(receiver_impl: str, driver: ReceiverDriver, releases: ReleaseServer,
                       production_broker: ProductionBroker, rules: Rules, sntp_server: SntpServer,
                       tmp_path: Path) -> AsyncIterator[Bench]:
    """The bench of the other tests (production broker, observer as the service), the receiver
    logging in with the password the registry gave it (it downloads with it too), trusting the
    fleet's signing key."""
    production_broker.accounts.add_receiver(RECEIVER_ID, releases.password)
    observer = Observer(production_broker.host, production_broker.port, production_broker.service_username,
                        production_broker.service_password, RECEIVER_ID, topic_filter="loa/v1/rx/#", rules=rules)
    spec = dataclasses.replace(
        _spec(production_broker.host, production_broker.port, releases.password, tmp_path / "receiver-state",
              sntp_server.address),
        hardware=HARDWARE, firmware_keys=(releases.fleet_key,), update_trial_s=UPDATE_TRIAL_S,
        update_retry_base=UPDATE_RETRY_BASE)
    try:
        yield Bench(receiver_impl, driver, spec, observer, production_broker)
    finally:
        await driver.stop()
        observer.close()


def _update(command_id: str, release: Release, **fields: Any) -> dict[str, Any]:
    return command("update", command_id, **{"rel": release.release_id, "ver": release.version, "hw": HARDWARE,
                                            "url": release.url, **fields})


def _statuses(bench: Bench, command_id: str, *, after: float = float("-inf")) -> list[tuple[Seen, UpdateStatus]]:
    return [(m, s) for m, s in bench.observer.messages(UpdateStatus, after=after) if s.command_id == command_id]


async def _status(bench: Bench, command_id: str, state: UpdateState, *, after: float,
                  timeout: float = UPDATE_DEADLINE) -> tuple[Seen, UpdateStatus]:
    return await bench.observer.wait_for(
        lambda m, s: isinstance(s, UpdateStatus) and s.command_id == command_id and s.state is state,
        timeout=timeout, after=after, what=f"update status {state.value} of {command_id}")


def _states(bench: Bench, command_id: str, *, after: float = float("-inf")) -> list[UpdateState]:
    """The states reported, a state repeated in a row (downloading) once."""
    out: list[UpdateState] = []
    for _, status in _statuses(bench, command_id, after=after):
        if not out or out[-1] is not status.state:
            out.append(status.state)
    return out


def _runs(firmware: str | None, version: str) -> bool:
    """A birth's or report's ``fw`` names ``version`` (it ends with it: "loa-fw-1.4.0")."""
    return firmware is not None and firmware.endswith(version)


async def _confirmed(bench: Bench, command_id: str, release: Release, *, after: float, old_session: int) -> UpdateStatus:
    """The goodbye of ``old_session``, a boot birth of the new version, ``confirmed`` and
    ``done`` in its session; returns the confirmed status."""
    bye, _ = await bench.observer.wait_state(
        State.OFFLINE, timeout=UPDATE_DEADLINE, after=after, what="goodbye before the reset into the new version",
        where=lambda s: s.session == old_session and s.reason is StateReason.SHUTDOWN)
    seen_birth, birth = await bench.observer.wait_state(
        State.ONLINE, timeout=UPDATE_DEADLINE, after=bye.t, what="birth of the new version")
    assert birth.reason is StateReason.BOOT, f"the new version boots: {birth}"
    assert _runs(birth.firmware, release.version), f"the new version's birth names {release.version}: {birth}"
    assert birth.hardware == HARDWARE, f"a 1.2 birth names the hardware family: {birth}"
    seen, confirmed = await _status(bench, command_id, UpdateState.CONFIRMED, after=after)
    assert seen.t >= seen_birth.t and confirmed.session == birth.session, (
        f"confirmed by the new version, after its birth: {confirmed}, birth {birth}")
    done = await bench.ack(command_id, AckStatus.DONE, after=seen_birth.t)
    assert done.session == birth.session
    await bench.observer.wait_for(
        lambda m, r: isinstance(r, Telemetry) and r.session == birth.session and _runs(r.firmware, release.version),
        timeout=5, after=seen_birth.t, what="telemetry of the new version")
    return confirmed


async def _back_on_old(bench: Bench, *, after: float, old_firmware: str) -> tuple[Seen, Any]:
    """A boot birth, after ``after``, of the version that ran before."""
    seen, birth = await bench.observer.wait_state(
        State.ONLINE, timeout=UPDATE_DEADLINE, after=after, what="birth of the old version",
        where=lambda s: s.reason is StateReason.BOOT)
    assert birth.firmware == old_firmware, f"the old version runs again: {birth}, it was {old_firmware}"
    return seen, birth


async def test_an_update_is_fetched_checked_installed_and_confirmed(update_bench: Bench,
                                                                    releases: ReleaseServer) -> None:
    bench = update_bench
    _, birth = await bench.start()
    assert birth.hardware == HARDWARE, f"a 1.2 birth names the hardware family: {birth}"
    good = releases.releases["good"]
    sent = await bench.send(_update("u-good", good))
    accepted = await bench.ack("u-good", AckStatus.ACCEPTED, after=sent)
    assert accepted.session == birth.session
    confirmed = await _confirmed(bench, "u-good", good, after=sent, old_session=birth.session)

    assert _states(bench, "u-good") == [
        UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.DOWNLOADED, UpdateState.VERIFIED,
        UpdateState.INSTALLING, UpdateState.REBOOTING, UpdateState.CONFIRMED]
    percents = [s.percent for _, s in _statuses(bench, "u-good") if s.state is UpdateState.DOWNLOADING]
    assert None not in percents, f"every downloading status says how far: {percents}"
    assert percents == sorted(p or 0 for p in percents) and percents[-1] == 100, f"download percentages {percents}"
    assert all(s.percent is None for _, s in _statuses(bench, "u-good") if s.state is not UpdateState.DOWNLOADING)
    assert confirmed.fetched is not None and good.size <= confirmed.fetched <= RESUME_OVERHEAD * good.size, (
        f"fetched {confirmed.fetched} bytes of a release of {good.size}")
    served, _ = releases.served(good)
    assert served >= good.size, f"the endpoint sent {served} bytes of {good.size}"
    # The old version is gone for good: a power cycle boots the new one again.
    await bench.driver.power_off()
    off = now()
    await bench.driver.power_on()
    _, again = await bench.observer.wait_state(State.ONLINE, timeout=CONNECT_DEADLINE, after=off, what="birth")
    assert _runs(again.firmware, good.version), again
    await bench.finish()


async def test_a_cut_download_resumes_where_it_stopped(update_bench: Bench, releases: ReleaseServer) -> None:
    bench = update_bench
    _, birth = await bench.start()
    await bench.update_faults(cut_after=4000, cuts=4)
    good = releases.releases["good"]
    before_served, before_requests = releases.served(good)
    sent = await bench.send(_update("u-cut", good))
    confirmed = await _confirmed(bench, "u-cut", good, after=sent, old_session=birth.session)
    assert confirmed.fetched is not None and good.size <= confirmed.fetched <= RESUME_OVERHEAD * good.size, (
        f"fetched {confirmed.fetched} bytes of a release of {good.size}: the cut responses were not resumed")
    served, requests = releases.served(good)
    # manifest.json, manifest.sig, one request per file and one more per cut (resumed by Range).
    assert requests - before_requests >= 2 + len(FILES) + 4, f"{requests - before_requests} requests"
    assert served - before_served >= good.size
    await bench.finish()


async def test_a_corrupted_byte_fails_the_hash_and_nothing_is_switched(update_bench: Bench,
                                                                       releases: ReleaseServer) -> None:
    bench = update_bench
    _, birth = await bench.start()
    good = releases.releases["good"]
    await bench.update_faults(corrupt_at=FILES["loa/app.mpy"] + 1000)  # in the second file
    sent = await bench.send(_update("u-bad-byte", good))
    seen, failed = await _status(bench, "u-bad-byte", UpdateState.FAILED, after=sent)
    assert failed.reason == AckReason.HASH.value, failed
    ack = await bench.ack("u-bad-byte", AckStatus.FAILED, after=sent)
    assert ack.reason == AckReason.HASH.value, ack
    await asyncio.sleep(QUIET_S)
    assert UpdateState.INSTALLING not in _states(bench, "u-bad-byte"), _states(bench, "u-bad-byte")
    assert not [s for _, s in bench.observer.messages(after=sent) if getattr(s, "state", None) is State.OFFLINE], (
        "no goodbye, no reboot after a failed hash")
    report = bench.observer.messages(Telemetry, after=seen.t)
    assert report and report[-1][1].firmware == birth.firmware and report[-1][1].session == birth.session
    await bench.finish()


async def test_a_release_signed_by_an_untrusted_key_is_refused_before_its_files(update_bench: Bench,
                                                                                releases: ReleaseServer) -> None:
    bench = update_bench
    _, birth = await bench.start()
    stranger = releases.releases["stranger"]
    # The endpoint counts per receiver id and release, over every implementation's run.
    before, _ = releases.served(stranger)
    sent = await bench.send(_update("u-stranger", stranger))
    _, failed = await _status(bench, "u-stranger", UpdateState.FAILED, after=sent)
    assert failed.reason == AckReason.SIGNATURE.value, failed
    ack = await bench.ack("u-stranger", AckStatus.FAILED, after=sent)
    assert ack.reason == AckReason.SIGNATURE.value, ack
    assert _states(bench, "u-stranger") == [UpdateState.OFFERED, UpdateState.FAILED]
    await asyncio.sleep(QUIET_S)
    served = releases.served(stranger)[0] - before
    assert served <= stranger.signed_part, f"{served} bytes served: files fetched before the signature was checked"
    assert not [s for _, s in bench.observer.messages(after=sent) if getattr(s, "state", None) is State.OFFLINE], (
        "no goodbye, no reboot after a refused signature")
    await bench.finish()


async def test_an_update_for_other_hardware_an_older_version_or_a_second_update_is_rejected(
        update_bench: Bench, releases: ReleaseServer) -> None:
    bench = update_bench
    await bench.start()
    good = releases.releases["good"]
    sent = await bench.send(_update("u-other-hw", good, hw=OTHER_HARDWARE))
    assert (await bench.ack("u-other-hw", AckStatus.REJECTED, after=sent)).reason == AckReason.WRONG_HARDWARE.value
    sent = await bench.send(_update("u-older", good, ver="0.9.0"))
    assert (await bench.ack("u-older", AckStatus.REJECTED, after=sent)).reason == AckReason.DOWNGRADE.value
    # One update under way (waiting out a long jitter): a second is busy, the first repeated is a dup.
    sent = await bench.send(_update("u-first", good, jit=3600))
    await bench.ack("u-first", AckStatus.ACCEPTED, after=sent)
    await _status(bench, "u-first", UpdateState.OFFERED, after=sent)
    sent = await bench.send(_update("u-second", good))
    assert (await bench.ack("u-second", AckStatus.REJECTED, after=sent)).reason == AckReason.UPDATE_BUSY.value
    sent = await bench.send(_update("u-first", good, jit=3600))
    await bench.ack("u-first", AckStatus.ACCEPTED, after=sent, duplicate=True)
    await asyncio.sleep(0.5)
    for rejected in ("u-other-hw", "u-older", "u-second"):
        assert not _statuses(bench, rejected), f"no update status for the rejected {rejected}"
    await bench.finish()


async def test_a_new_version_that_cannot_connect_is_rolled_back(update_bench: Bench, releases: ReleaseServer) -> None:
    bench = update_bench
    _, birth = await bench.start()
    good = releases.releases["good"]
    await bench.update_faults(never_confirm=True)
    sent = await bench.send(_update("u-trial", good))
    bye, _ = await bench.observer.wait_state(
        State.OFFLINE, timeout=UPDATE_DEADLINE, after=sent, what="goodbye before the reset into the new version",
        where=lambda s: s.session == birth.session and s.reason is StateReason.SHUTDOWN)
    seen_birth, back = await _back_on_old(bench, after=bye.t, old_firmware=birth.firmware or "")
    assert seen_birth.t - bye.t >= UPDATE_TRIAL_S - 0.5, (
        f"back after {seen_birth.t - bye.t:.1f} s, the trial lasts {UPDATE_TRIAL_S} s")
    seen, rolled_back = await _status(bench, "u-trial", UpdateState.ROLLED_BACK, after=bye.t)
    assert rolled_back.reason == "no_connection" and rolled_back.session == back.session, rolled_back
    ack = await bench.ack("u-trial", AckStatus.FAILED, after=bye.t)
    assert ack.reason == AckReason.ROLLED_BACK.value and ack.session == back.session, ack
    assert [s.state for _, s in _statuses(bench, "u-trial", after=bye.t)] == [UpdateState.ROLLED_BACK], (
        "the new version reported nothing: after the reset, only the old one's rolled_back")
    await bench.finish()


@pytest.mark.parametrize("step", [UpdateState.DOWNLOADING, UpdateState.INSTALLING, UpdateState.REBOOTING],
                         ids=lambda step: step.value)
async def test_a_power_loss_during_an_update_leaves_a_good_version(update_bench: Bench, releases: ReleaseServer,
                                                                   step: UpdateState) -> None:
    """Wherever the power goes, the board boots a version that works, and the service is told
    which: before the switch (downloading) the old one, once the new slot is marked to run on
    trial (rebooting) the new one; at installing either. The update then ends, confirmed
    by the new version or failed or rolled back on the old one, and the births say which runs."""
    bench = update_bench
    _, birth = await bench.start()
    good = releases.releases["good"]
    cid = f"u-power-{step.value}"
    await bench.update_faults(power_loss_at=step.value, off_seconds=1.0)
    sent = await bench.send(_update(cid, good))
    seen_step, _ = await _status(bench, cid, step, after=sent)
    seen_birth, again = await bench.observer.wait_state(
        State.ONLINE, timeout=UPDATE_DEADLINE, after=seen_step.t, what="birth after the power loss",
        where=lambda s: s.session > birth.session)
    assert again.reason is StateReason.BOOT, again
    new = _runs(again.firmware, good.version)
    assert new or again.firmware == birth.firmware, f"a birth of the old or the new version: {again}"
    if step is UpdateState.DOWNLOADING:
        assert not new, f"the old slot stays active until the new version has confirmed itself: {again}"
    if step is UpdateState.REBOOTING:
        assert new, f"the new slot was marked to run on trial before the reset: {again}"
    _, final = await bench.observer.wait_for(
        lambda m, s: isinstance(s, UpdateStatus) and s.command_id == cid and s.state.final,
        timeout=UPDATE_DEADLINE, after=seen_step.t, what=f"the final update status of {cid}")
    births = {b.session: b for _, b in bench.observer.messages(StateMessage) if b.state is State.ONLINE}
    runs = births[final.session]
    if final.state is UpdateState.CONFIRMED:
        assert _runs(runs.firmware, good.version), f"confirmed by the new version: {final}, birth {runs}"
        await bench.ack(cid, AckStatus.DONE, after=seen_birth.t, timeout=UPDATE_DEADLINE)
    else:
        assert runs.firmware == birth.firmware, f"{final.state.value} reported by the old version: {runs}"
        ack = await bench.ack(cid, AckStatus.FAILED, after=seen_birth.t, timeout=UPDATE_DEADLINE)
        assert ack.reason, ack
    await bench.finish()


async def test_an_update_offered_while_a_slot_plays_is_installed_after_it(update_bench: Bench, releases: ReleaseServer,
                                                                         stream_server: StreamServer) -> None:
    bench = update_bench
    await clear_of_midnight(30)
    birth, _ = await bench.start_synced()
    start = time.time() + 2.0
    url = stream_server.url("/live.mp3")
    # The slot outlasts any download; once the deferral is seen the slot is cut short by a
    # new schedule, so the test does not depend on how fast a loaded machine downloads.
    schedule = command("schedule", "s-update", ver=3, tz=420,
                       slots=[slot("news", start, start + LONG_SLOT_S, url)])
    sent = await bench.send(schedule)
    await bench.ack("s-update", AckStatus.DONE, after=sent)
    await bench.event(EventKind.PLAY_STARTED, "sched:news", after=sent, timeout=8.0)
    good = releases.releases["good"]
    offered = await bench.send(_update("u-deferred", good))
    seen_deferred, deferred = await _status(bench, "u-deferred", UpdateState.DEFERRED, after=offered)
    assert deferred.reason == "playing_slot", deferred
    assert not [m for m, s in _statuses(bench, "u-deferred", after=offered)
                if s.state in (UpdateState.INSTALLING, UpdateState.REBOOTING)], "nothing installed while it plays"
    await asyncio.sleep(2.0)  # deferred stays deferred while the slot goes on
    assert _states(bench, "u-deferred")[-1] is UpdateState.DEFERRED
    shortened = command("schedule", "s-update-end", ver=4, tz=420,
                        slots=[slot("news", start, time.time() + 1.0, url)])
    cut = await bench.send(shortened)
    await bench.ack("s-update-end", AckStatus.DONE, after=cut)
    seen_end, _ = await bench.event(EventKind.PLAY_STOPPED, "ended:news", after=offered, timeout=10.0)
    seen_installing, _ = await _status(bench, "u-deferred", UpdateState.INSTALLING, after=offered)
    assert seen_installing.t >= seen_end.t, "installed only once the slot had ended"
    await _confirmed(bench, "u-deferred", good, after=offered, old_session=birth.session)
    assert _states(bench, "u-deferred") == [
        UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.DOWNLOADED, UpdateState.VERIFIED,
        UpdateState.DEFERRED, UpdateState.INSTALLING, UpdateState.REBOOTING, UpdateState.CONFIRMED]
    await bench.finish()
