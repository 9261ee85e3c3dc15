"""One receiver lifetime on the production broker: boot, telemetry, a clean reboot, a power
loss (the broker's Last Will) and power-on again."""

from __future__ import annotations

import asyncio

from fleet_service.protocol import Event, EventKind, State, StateMessage
from fleet_service.protocol.messages import StateReason
from tests.conformance.bench import (
    CONNECT_DEADLINE,
    EVENT_DEADLINE,
    SLACK,
    TELEMETRY_INTERVAL,
    WILL_DEADLINE,
    Bench,
    assert_boot_birth,
    check_telemetry,
    nothing_between,
    now,
)


def _boot_event(session: int):
    return lambda m, e: isinstance(e, Event) and e.kind is EventKind.BOOT and e.session == session


async def test_boot_telemetry_reboot_power_loss_and_power_on(bench: Bench) -> None:
    observer = bench.observer

    # 1. Start: a retained birth (online, boot, session s, fw), a boot event, telemetry.
    started = now()
    _, birth = await bench.start()
    s1 = birth.session
    await observer.wait_for(_boot_event(s1), timeout=EVENT_DEADLINE, after=started, what=f"boot event of session {s1}")
    reports = await observer.wait_telemetry(s1, 6, timeout=6 * TELEMETRY_INTERVAL + 3, after=started)
    check_telemetry(reports, birth, booted_at=started, cadence=True)
    assert await bench.retained_state() == birth

    # 2. Clean reboot: a retained goodbye (offline, shutdown, s) and DISCONNECT, then a boot
    # birth of a larger session. (That no Will of s follows is checked at the end, once the
    # broker would have published it.)
    rebooted = now()
    await bench.driver.reboot()
    seen_bye, goodbye = await observer.wait_state(
        State.OFFLINE, timeout=CONNECT_DEADLINE, after=rebooted, what="goodbye before the reboot")
    assert goodbye == StateMessage(state=State.OFFLINE, session=s1, reason=StateReason.SHUTDOWN)
    _, birth2 = await observer.wait_state(
        State.ONLINE, timeout=CONNECT_DEADLINE, after=seen_bye.t, what="birth after the reboot")
    assert_boot_birth(birth2)
    assert birth2.session > s1, f"session {birth2.session} after a reboot from session {s1}"
    s2 = birth2.session
    await observer.wait_for(_boot_event(s2), timeout=EVENT_DEADLINE, after=seen_bye.t, what=f"boot event of session {s2}")
    reports = await observer.wait_telemetry(s2, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=seen_bye.t)
    check_telemetry(reports, birth2, booted_at=rebooted)

    # 3. Power loss: no goodbye; once the keepalive expires the broker publishes the retained
    # Will of that session.
    powered_off = now()
    await bench.driver.power_off()
    seen_will, will = await observer.wait_state(
        State.OFFLINE, timeout=WILL_DEADLINE, after=powered_off, what="Last Will after the power loss")
    assert will == StateMessage(state=State.OFFLINE, session=s2, reason=StateReason.LOST), (
        f"after a power loss the broker publishes the Will of the live session; got {will}")
    assert await bench.retained_state() == will
    # Anything in flight at the power loss has arrived by then; after that only the Will.
    stray = nothing_between(observer, powered_off + 0.5, now(), but=seen_will)
    assert not stray, "published while powered off: " + "; ".join(m.describe() for m in stray)

    # 4. Power on: a boot birth of a session larger than every earlier one (the counter
    # survived the power loss), a boot event, uptime from zero.
    powered_on = now()
    await bench.driver.power_on()
    _, birth3 = await observer.wait_state(State.ONLINE, timeout=CONNECT_DEADLINE, after=powered_on,
                                          what="birth after power-on")
    assert_boot_birth(birth3)
    assert birth3.session > s2, f"session {birth3.session} after power-on, {s2} before: the counter must survive"
    s3 = birth3.session
    await observer.wait_for(_boot_event(s3), timeout=EVENT_DEADLINE, after=powered_on, what=f"boot event of session {s3}")
    reports = await observer.wait_telemetry(s3, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=powered_on)
    check_telemetry(reports, birth3, booted_at=powered_on)
    assert await bench.retained_state() == birth3

    # The goodbye of session s1 discarded its Will: none may come, however long one waits
    # (here, as long as the broker takes to publish the Will of a silent connection).
    wait = seen_bye.t + WILL_DEADLINE + SLACK - now()
    if wait > 0:
        await asyncio.sleep(wait)
    wills = [s for _, s in observer.messages(StateMessage) if s.session == s1 and s.reason is StateReason.LOST]
    assert not wills, f"a Will of session {s1} after its goodbye: the reboot did not DISCONNECT"

    await bench.finish()
