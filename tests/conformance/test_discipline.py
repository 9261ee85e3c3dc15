"""On a permissive broker, where the receiver could publish anywhere and a tester may write its
state topic: it keeps to its own topics, and puts its birth back over a late Will."""

from __future__ import annotations

from fleet_service.protocol import State, StateMessage
from fleet_service.protocol.messages import StateReason
from tests.conformance.bench import CONNECT_DEADLINE, EVENT_DEADLINE, TELEMETRY_INTERVAL, Bench, now


async def test_keeps_to_its_topics_and_reasserts_its_birth_over_a_late_will(open_bench: Bench) -> None:
    bench = open_bench
    observer = bench.observer
    started = now()
    _, birth = await bench.start()
    await observer.wait_telemetry(birth.session, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=started)

    # A reboot gives an older session whose Will can turn up late.
    rebooted = now()
    await bench.driver.reboot()
    seen_bye, _ = await observer.wait_state(
        State.OFFLINE, timeout=CONNECT_DEADLINE, after=rebooted, what="goodbye before the reboot")
    seen_birth, birth2 = await observer.wait_state(
        State.ONLINE, timeout=CONNECT_DEADLINE, after=seen_bye.t, what="birth after the reboot")
    await observer.wait_telemetry(birth2.session, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=seen_birth.t)

    # The Will of the older session arrives now and becomes the retained state, as a Will
    # delayed by the broker would. The receiver sees it on its own state topic and publishes
    # the birth of its current session again.
    late_will = StateMessage(state=State.OFFLINE, session=birth.session, reason=StateReason.LOST)
    planted = now()
    await bench.publish("state", late_will.model_dump_json(by_alias=True, exclude_none=True).encode(), retain=True)
    _, again = await observer.wait_state(
        State.ONLINE, timeout=EVENT_DEADLINE, after=planted, what="birth re-published over the late Will")
    assert again.session == birth2.session, (
        f"re-published birth of session {again.session}, the live session is {birth2.session}")
    assert again.firmware == birth2.firmware
    await bench.assert_retained(again, timeout=EVENT_DEADLINE)

    # It goes on reporting in the same session: the late Will was no reason to reconnect.
    await observer.wait_telemetry(birth2.session, 2, timeout=2 * TELEMETRY_INTERVAL + 3, after=planted)
    # Everything it published, seen on '#': only its own protocol topics, never cmd (checked
    # for every message by the observer).
    await bench.finish()
