"""Connectivity decisions, kept apart from I/O: messages and clock ticks in, transitions out.

The rules (docs/uptime.md explains them with the detection latency of each):
- A birth (state online) starts a session. A birth for the session already online is a repeat
  (a re-asserted birth, or the retained copy seen again) and changes nothing.
- An offline state counts only if it carries the session that is online now: a Will that
  arrives late from an older connection never marks a live receiver offline.
- Any message of the current session proves the receiver alive; silence longer than the
  inactivity timeout marks it offline ("silent"), and its next message brings it back
  ("resumed").
- A birth for a new session while the old one is still online means the outage in between was
  not seen (the service or the broker was down). The receiver tells how long it was without
  the broker (``offline_s``); that interval is recorded as an outage.
- For a grace period after the service (re)connects to the broker, silence is not held against
  anyone: retained state is reconciled first and receivers get time to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet_service.protocol.messages import State, StateMessage, StateReason
from fleet_service.uptime.models import Connectivity, TransitionCause


@dataclass(frozen=True, slots=True)
class Transition:
    receiver_id: str
    state: Connectivity
    at: datetime
    cause: TransitionCause
    session: int | None


@dataclass(slots=True)
class _Receiver:
    online: bool
    session: int | None
    # Where the silence timeout counts from: the last message heard, or the service's own
    # reconnection if that is later (begin_grace).
    last_heard: datetime
    silent: bool = False  # offline because of the inactivity timeout, not a Will or a goodbye
    # The last message really heard (never moved by begin_grace): the earliest an outage can
    # have begun. None: not known (a receiver restored from a ledger without live state).
    heard_at: datetime | None = None


class ConnectivityTracker:
    def __init__(self, inactivity_timeout: timedelta, grace: timedelta) -> None:
        self.inactivity_timeout = inactivity_timeout
        self.grace = grace
        self._receivers: dict[str, _Receiver] = {}
        self._quiet_until: datetime | None = None
        self.stale_messages = 0
        self.unobserved_outages = 0

    # --- set-up -------------------------------------------------------------------------------

    def restore(self, receiver_id: str, state: Connectivity, session: int | None, since: datetime,
                heard_at: datetime | None = None) -> None:
        """Load the ledger's open interval of a receiver when the service starts, with the last
        time it was heard (kept in the live state) if that is known."""
        heard = max(since, heard_at) if heard_at is not None else since
        self._receivers[receiver_id] = _Receiver(state is Connectivity.ONLINE, session, heard, heard_at=heard)

    def hold(self) -> None:
        """The service cannot hear the broker (it is down, or the way to it is): silence means
        nothing until ``begin_grace`` is called on reconnection. Outages the receivers really
        had meanwhile are recorded from their reconnect births (``offline_s``)."""
        self._quiet_until = datetime.max.replace(tzinfo=UTC)

    def begin_grace(self, now: datetime) -> None:
        """The service has (re)connected to the broker: silence before now + grace is forgiven,
        and every online receiver is treated as heard at ``now``."""
        self._quiet_until = now + self.grace
        for receiver in self._receivers.values():
            if receiver.online:
                receiver.last_heard = max(receiver.last_heard, now)

    # --- inputs -------------------------------------------------------------------------------

    def on_state(self, receiver_id: str, message: StateMessage, at: datetime, *, retained: bool) -> list[Transition]:
        current = self._receivers.get(receiver_id)
        if message.state is State.ONLINE:
            return self._on_birth(receiver_id, current, message, at, retained=retained)
        if current is None:
            # First thing ever heard is an offline state (e.g. a retained Will): remember it.
            self._receivers[receiver_id] = _Receiver(False, message.session, at, heard_at=at)
            return [Transition(receiver_id, Connectivity.OFFLINE, at, _offline_cause(message, retained), message.session)]
        if current.session is not None and message.session != current.session:
            self.stale_messages += 1
            return []
        if not current.online:
            current.silent = False  # a goodbye or Will after a silence: the reason is now known
            return []
        current.online = False
        current.silent = False
        current.session = message.session  # it was unknown (None) if not this one already
        return [Transition(receiver_id, Connectivity.OFFLINE, at, _offline_cause(message, retained), message.session)]

    def on_activity(self, receiver_id: str, session: int, at: datetime) -> list[Transition]:
        """Telemetry or an event of ``session`` arrived."""
        current = self._receivers.get(receiver_id)
        if current is None or current.session is None:
            # Heard before any birth (the birth is retained and QoS 1, so this is rare: a
            # receiver that predates the service's ledger). Take the session as the current one.
            self._receivers[receiver_id] = _Receiver(True, session, at, heard_at=at)
            return [Transition(receiver_id, Connectivity.ONLINE, at, TransitionCause.RESUMED, session)]
        if session < current.session:
            self.stale_messages += 1
            return []
        current.last_heard = at
        current.heard_at = at
        if session > current.session:
            # A newer session whose birth did not reach us (a broker overloaded beyond its queue
            # limit drops QoS 1 messages too): the receiver is plainly alive in it.
            current.session = session
            self.unobserved_outages += 1
            # Online already, the transition only tells the ledger the new session: the ledger's
            # open interval is what the tracker restarts from, and a Will of this session must
            # count after a restart too.
            current.online = True
            current.silent = False
            return [Transition(receiver_id, Connectivity.ONLINE, at, TransitionCause.RESUMED, session)]
        if not current.online and current.silent:
            current.online = True
            current.silent = False
            return [Transition(receiver_id, Connectivity.ONLINE, at, TransitionCause.RESUMED, session)]
        return []

    def on_revoked(self, receiver_id: str, at: datetime) -> list[Transition]:
        current = self._receivers.get(receiver_id)
        if current is None or not current.online:
            return []
        current.online = False
        return [Transition(receiver_id, Connectivity.OFFLINE, at, TransitionCause.REVOKED, current.session)]

    def sweep(self, now: datetime) -> list[Transition]:
        """Mark silent receivers offline. Call every few seconds."""
        if self._quiet_until is not None and now < self._quiet_until:
            return []
        deadline = now - self.inactivity_timeout
        transitions = []
        for receiver_id, receiver in self._receivers.items():
            if receiver.online and receiver.last_heard < deadline:
                receiver.online = False
                receiver.silent = True
                # The receiver was last heard at last_heard: that is when the outage began, as
                # far as anyone can tell; recording it at ``now`` would add the timeout itself.
                transitions.append(
                    Transition(receiver_id, Connectivity.OFFLINE, receiver.last_heard, TransitionCause.SILENT,
                               receiver.session)
                )
        return transitions

    # --- queries ------------------------------------------------------------------------------

    def is_online(self, receiver_id: str) -> bool | None:
        receiver = self._receivers.get(receiver_id)
        return None if receiver is None else receiver.online

    def session_of(self, receiver_id: str) -> int | None:
        receiver = self._receivers.get(receiver_id)
        return None if receiver is None else receiver.session

    def last_heard(self, receiver_id: str) -> datetime | None:
        receiver = self._receivers.get(receiver_id)
        return None if receiver is None else receiver.last_heard

    def heard_at(self, receiver_id: str) -> datetime | None:
        """When a message of the receiver was last really heard (None if not known)."""
        receiver = self._receivers.get(receiver_id)
        return None if receiver is None else receiver.heard_at

    def counts(self) -> tuple[int, int]:
        online = sum(1 for r in self._receivers.values() if r.online)
        return online, len(self._receivers) - online

    def __len__(self) -> int:
        return len(self._receivers)

    # --- internals ----------------------------------------------------------------------------

    def _on_birth(self, receiver_id: str, current: _Receiver | None, message: StateMessage, at: datetime,
                  *, retained: bool) -> list[Transition]:
        cause = TransitionCause.RECONCILED if retained else TransitionCause.BIRTH
        if current is None:
            self._receivers[receiver_id] = _Receiver(True, message.session, at, heard_at=at)
            return [Transition(receiver_id, Connectivity.ONLINE, at, cause, message.session)]
        if current.online and current.session == message.session:
            current.last_heard = max(current.last_heard, at)
            if not retained:  # a retained copy was heard long ago, not now
                current.heard_at = max(current.heard_at or at, at)
            return []
        transitions = []
        if current.online:
            # A new session began while the old one looked alive: an outage we did not see.
            self.unobserved_outages += 1
            gone_at = self._unobserved_outage_start(current, message, at)
            if gone_at < at:  # of measurable length; otherwise the session just changes
                transitions.append(Transition(receiver_id, Connectivity.OFFLINE, gone_at,
                                              TransitionCause.RECONCILED, current.session))
        current.online = True
        current.silent = False
        current.session = message.session
        current.last_heard = at
        current.heard_at = at
        transitions.append(Transition(receiver_id, Connectivity.ONLINE, at, cause, message.session))
        return transitions

    @staticmethod
    def _unobserved_outage_start(current: _Receiver, message: StateMessage, at: datetime) -> datetime:
        # What was really last heard of the old session (kept across a restart of the service
        # in the live state); the silence clock may have been moved past it by begin_grace.
        heard = current.heard_at if current.heard_at is not None else current.last_heard
        if message.offline_s is not None:
            start = at - timedelta(seconds=message.offline_s)
        elif message.reason is StateReason.BOOT:
            # Power-on: the receiver cannot know how long it was off; the last message heard
            # from the old session is the best bound the service has.
            start = heard
        else:
            start = at
        # Never before what we last heard of the old session, never after the birth itself.
        return min(max(start, heard), at)


def _offline_cause(message: StateMessage, retained: bool) -> TransitionCause:
    if retained:
        return TransitionCause.RECONCILED
    return TransitionCause.SHUTDOWN if message.reason is StateReason.SHUTDOWN else TransitionCause.WILL
