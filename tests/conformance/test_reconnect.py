"""Losing the broker and coming back, on the production broker: a silent link, a broker
restart, a refused login; and commands reaching the receiver on every new connection."""

from __future__ import annotations

import asyncio

from fleet_service.protocol import Event, EventKind, State, StateMessage, Telemetry
from fleet_service.protocol.messages import StateReason
from tests.conformance.bench import (
    EVENT_DEADLINE,
    RECONNECT_DEADLINE,
    SLACK,
    TELEMETRY_INTERVAL,
    WILL_DEADLINE,
    Bench,
    assert_reconnect_birth,
    check_telemetry,
    now,
)

# Long enough for the receiver to give up the silent connection (an unanswered PINGREQ after
# a keepalive of silence, and a ping timeout: 3 x keepalive at most is allowed), so that it
# comes back with a new connection, a new session and a reconnect birth.
CUT_SECONDS = 8.0
# How long the receiver's login stays refused while its attempts are counted.
REFUSED_SECONDS = 4.0
# Attempts in REFUSED_SECONDS: at least two (it keeps trying, with waits capped at
# BACKOFF_CAP) and not a tight loop (on a local broker that would be hundreds).
MIN_ATTEMPTS = 2
MAX_ATTEMPTS = 40
# Mosquitto 2.0.11's log line for a CONNECT it refuses because the login is disabled.
REFUSED_LOG_LINE = "disconnected, not authorised."


async def _steady(bench: Bench) -> StateMessage:
    """Start the receiver and wait until it reports."""
    started = now()
    _, birth = await bench.start()
    await bench.observer.wait_telemetry(birth.session, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=started)
    return birth


def _new_birth(previous: StateMessage):
    """A birth that is not ``previous`` re-asserted (which would repeat it unchanged)."""
    return lambda s: s.session != previous.session or s.reason is not previous.reason


async def _back(bench: Bench, previous: StateMessage, *, outage_began: float, outage_ends: float) -> StateMessage:
    """The reconnect birth after an outage that began at ``outage_began`` and whose cause is
    gone at ``outage_ends``, and the reports of its session that follow."""
    seen, birth = await bench.observer.wait_state(
        State.ONLINE, timeout=outage_ends - now() + RECONNECT_DEADLINE, after=outage_began,
        what="birth after the outage", where=_new_birth(previous))
    assert_reconnect_birth(birth, previous.session, outage=seen.t - outage_began)
    reports = await bench.observer.wait_telemetry(birth.session, 3, timeout=3 * TELEMETRY_INTERVAL + 3, after=seen.t)
    check_telemetry(reports, birth)
    boots = [e for _, e in bench.observer.messages(Event) if e.session == birth.session and e.kind is EventKind.BOOT]
    assert not boots, f"a boot event in session {birth.session}, which only reconnected"
    return birth


async def test_reconnects_after_a_silent_link_cut(bench: Bench) -> None:
    birth = await _steady(bench)
    cut = now()
    await bench.cut_link(CUT_SECONDS)
    back = await _back(bench, birth, outage_began=cut, outage_ends=cut + CUT_SECONDS)
    seen_back = next(m for m, s in bench.observer.messages(StateMessage) if s == back)
    assert seen_back.t >= cut + CUT_SECONDS - 0.5, "a new connection while the link was cut: the driver did not cut it"
    # It last heard the broker before the cut, so it was away at least as long as the cut.
    assert back.offline_s is not None and back.offline_s >= CUT_SECONDS - SLACK, (
        f"'off' = {back.offline_s} s after a {CUT_SECONDS:g} s cut")
    # The broker publishes the Will of the silent connection: at its keepalive expiry, or when
    # the old connection finally breaks. Should that come after the new birth, the receiver
    # puts its birth back (a late Will); either way the retained state ends up right.
    _, will = await bench.observer.wait_state(
        State.OFFLINE, timeout=WILL_DEADLINE, after=cut, what="Will of the connection cut off")
    assert will == StateMessage(state=State.OFFLINE, session=birth.session, reason=StateReason.LOST)
    await bench.assert_retained(back, timeout=EVENT_DEADLINE)
    await bench.finish()


async def test_reconnects_after_a_broker_restart(bench: Bench) -> None:
    birth = await _steady(bench)
    restart = now()
    await asyncio.to_thread(bench.broker.restart)
    back = await _back(bench, birth, outage_began=restart, outage_ends=now())
    await bench.assert_retained(back, timeout=EVENT_DEADLINE)
    await bench.finish()


async def test_retries_with_backoff_while_its_login_is_refused(bench: Bench) -> None:
    birth = await _steady(bench)
    log_mark = len(bench.broker.log)
    refused = now()
    # Disabling the login drops the live connection and refuses every CONNECT until enabled.
    await asyncio.to_thread(bench.broker.accounts.disable_receiver, bench.receiver_id)
    await asyncio.sleep(REFUSED_SECONDS)
    attempts = bench.broker.log[log_mark:].count(REFUSED_LOG_LINE)
    assert MIN_ATTEMPTS <= attempts <= MAX_ATTEMPTS, (
        f"{attempts} refused connection attempts in {REFUSED_SECONDS:g} s; expected retries with backoff "
        f"({MIN_ATTEMPTS} to {MAX_ATTEMPTS})")
    await asyncio.to_thread(bench.broker.accounts.enable_receiver, bench.receiver_id)
    back = await _back(bench, birth, outage_began=refused, outage_ends=now())
    # The counter goes up before every CONNECT, refused ones included: a session number is
    # never sent twice, even in a CONNECT whose answer was lost.
    assert back.session - birth.session >= attempts + 1, (
        f"session {birth.session} -> {back.session} across {attempts} refused CONNECTs and the accepted one")
    await bench.finish()


async def test_commands_reach_it_after_start_and_after_a_broker_restart(bench: Bench) -> None:
    bench.require_command_count()
    birth = await _steady(bench)
    await bench.assert_commands_reach_it(timeout=EVENT_DEADLINE)
    restart = now()
    await asyncio.to_thread(bench.broker.restart)
    seen, back = await bench.observer.wait_state(
        State.ONLINE, timeout=RECONNECT_DEADLINE, after=restart, what="birth after the restart",
        where=_new_birth(birth))
    # A clean session: the subscriptions died with the connection and must be made again.
    await bench.assert_commands_reach_it(timeout=EVENT_DEADLINE)
    await bench.observer.wait_for(lambda m, r: isinstance(r, Telemetry) and r.session == back.session,
                                  timeout=TELEMETRY_INTERVAL + 3, after=seen.t, what="telemetry after the restart")
    await bench.finish()
