"""The connectivity rules, message by message."""

from datetime import UTC, datetime, timedelta

from fleet_service.protocol.messages import State, StateMessage, StateReason
from fleet_service.uptime.models import Connectivity, TransitionCause
from fleet_service.uptime.tracker import ConnectivityTracker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def birth(session: int, reason: StateReason = StateReason.BOOT, offline_s: float | None = None) -> StateMessage:
    return StateMessage(state=State.ONLINE, session=session, reason=reason, offline_s=offline_s)


def will(session: int) -> StateMessage:
    return StateMessage(state=State.OFFLINE, session=session, reason=StateReason.LOST)


def goodbye(session: int) -> StateMessage:
    return StateMessage(state=State.OFFLINE, session=session, reason=StateReason.SHUTDOWN)


def tracker(timeout: float = 100, grace: float = 30) -> ConnectivityTracker:
    return ConnectivityTracker(timedelta(seconds=timeout), timedelta(seconds=grace))


def test_birth_then_will_of_same_session_goes_offline_at_will_time():
    t = tracker()
    [up] = t.on_state("r1", birth(1), at(0), retained=False)
    [down] = t.on_state("r1", will(1), at(50), retained=False)
    assert (up.state, up.cause, up.at) == (Connectivity.ONLINE, TransitionCause.BIRTH, at(0))
    assert (down.state, down.cause, down.at, down.session) == (Connectivity.OFFLINE, TransitionCause.WILL, at(50), 1)


def test_late_will_from_older_session_never_marks_live_receiver_offline():
    t = tracker()
    t.on_state("r1", birth(4), at(0), retained=False)
    t.on_state("r1", birth(5, StateReason.RECONNECT), at(10), retained=False)
    assert t.on_state("r1", will(4), at(11), retained=False) == []
    assert t.is_online("r1") is True
    assert t.stale_messages == 1


def test_repeated_birth_of_current_session_changes_nothing():
    t = tracker()
    t.on_state("r1", birth(2), at(0), retained=False)
    assert t.on_state("r1", birth(2), at(5), retained=True) == []


def test_goodbye_is_recorded_as_shutdown():
    t = tracker()
    t.on_state("r1", birth(1), at(0), retained=False)
    [down] = t.on_state("r1", goodbye(1), at(3), retained=False)
    assert down.cause is TransitionCause.SHUTDOWN


def test_silence_beyond_timeout_goes_offline_from_last_heard_and_resumes_on_next_message():
    t = tracker(timeout=100, grace=0)
    t.on_state("r1", birth(1), at(0), retained=False)
    t.on_activity("r1", 1, at(60))
    assert t.sweep(at(150)) == []  # 90 s of silence: not yet
    [down] = t.sweep(at(161))
    assert (down.cause, down.at) == (TransitionCause.SILENT, at(60))
    assert t.sweep(at(500)) == []  # reported once
    [up] = t.on_activity("r1", 1, at(600))
    assert (up.state, up.cause, up.at) == (Connectivity.ONLINE, TransitionCause.RESUMED, at(600))


def test_will_after_silence_does_not_add_a_second_outage():
    t = tracker(timeout=10, grace=0)
    t.on_state("r1", birth(1), at(0), retained=False)
    t.sweep(at(20))
    assert t.on_state("r1", will(1), at(25), retained=False) == []
    # and the Will explains the silence: a later message of that dead session does not revive it
    assert t.on_activity("r1", 1, at(30)) == []


def test_grace_after_service_restart_forgives_silence():
    t = tracker(timeout=100, grace=30)
    t.restore("r1", Connectivity.ONLINE, 7, at(-1000))  # from the ledger: online since long ago
    t.begin_grace(at(0))
    assert t.sweep(at(20)) == []
    assert t.sweep(at(99)) == []  # heard "at" restart: the timeout runs from there
    [down] = t.sweep(at(101))
    assert down.at == at(0)


def test_new_session_while_old_looks_online_records_the_outage_the_receiver_measured():
    t = tracker()
    t.on_state("r1", birth(1), at(0), retained=False)
    t.on_activity("r1", 1, at(100))
    down, up = t.on_state("r1", birth(2, StateReason.RECONNECT, offline_s=40), at(200), retained=False)
    assert (down.state, down.at, down.cause) == (Connectivity.OFFLINE, at(160), TransitionCause.RECONCILED)
    assert (up.state, up.at, up.session) == (Connectivity.ONLINE, at(200), 2)
    assert t.unobserved_outages == 1


def test_measured_outage_never_starts_before_last_message_heard():
    t = tracker()
    t.on_state("r1", birth(1), at(0), retained=False)
    t.on_activity("r1", 1, at(190))
    down, _ = t.on_state("r1", birth(2, StateReason.RECONNECT, offline_s=40), at(200), retained=False)
    assert down.at == at(190)


def test_retained_state_reconciles_after_restart():
    t = tracker()
    t.restore("r1", Connectivity.ONLINE, 3, at(-50))
    t.restore("r2", Connectivity.OFFLINE, 8, at(-50))
    [down] = t.on_state("r1", will(3), at(0), retained=True)
    [up] = t.on_state("r2", birth(9), at(0), retained=True)
    assert down.cause is TransitionCause.RECONCILED and up.cause is TransitionCause.RECONCILED
    assert t.on_state("r1", will(2), at(1), retained=True) == []  # an older one stays ignored


def test_activity_from_older_session_is_stale():
    t = tracker()
    t.on_state("r1", birth(5), at(0), retained=False)
    assert t.on_activity("r1", 4, at(1)) == []
    assert t.stale_messages == 1


def test_new_session_without_measurable_outage_only_changes_session():
    t = tracker()
    t.on_state("r1", birth(1), at(0), retained=False)
    [up] = t.on_state("r1", birth(2, StateReason.RECONNECT), at(10), retained=False)
    assert (up.state, up.session) == (Connectivity.ONLINE, 2)


def test_telemetry_of_a_newer_session_whose_birth_was_lost_keeps_receiver_alive():
    t = tracker(timeout=100, grace=0)
    t.on_state("r1", birth(3), at(0), retained=False)
    # The birth of session 4 was lost on the way: still online, the ledger told the new session.
    [same] = t.on_activity("r1", 4, at(50))
    assert (same.state, same.session) == (Connectivity.ONLINE, 4)
    assert t.session_of("r1") == 4
    assert t.sweep(at(140)) == []  # heard at 50: not silent
    # and after a Will of session 4, a report of session 5 brings it back
    t.on_state("r1", will(4), at(200), retained=False)
    [up] = t.on_activity("r1", 5, at(210))
    assert (up.state, up.cause, up.session) == (Connectivity.ONLINE, TransitionCause.RESUMED, 5)


def test_hold_while_the_service_cannot_hear_the_broker():
    t = tracker(timeout=10, grace=5)
    t.on_state("r1", birth(1), at(0), retained=False)
    t.hold()
    assert t.sweep(at(1000)) == []
    t.begin_grace(at(1000))
    assert t.sweep(at(1009)) == []
    [down] = t.sweep(at(1011))
    assert down.at == at(1000)


def test_an_offline_state_gives_a_receiver_of_unknown_session_its_session():
    """The ledger may hold an interval without a session (from before sessions were recorded):
    the offline state that ends it tells the session, and the tracker keeps it as the ledger does."""
    t = tracker()
    t.restore("r1", Connectivity.ONLINE, None, at(-50))
    [down] = t.on_state("r1", will(6), at(0), retained=False)
    assert (down.state, down.session) == (Connectivity.OFFLINE, 6)
    assert t.session_of("r1") == 6
