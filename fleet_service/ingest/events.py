"""What ingest makes of the receivers' messages: typed, frozen domain events, and the bus that
hands them to their subscribers.

Ingest publishes; commands, schedules, telemetry (and next alerts and updates) subscribe, in
one composition module (fleet_service/worker/composition.py). Adding a subscriber touches no
ingest code. Subscribers run in the event loop's thread, one after another, in the order they
subscribed; each must be quick (queue, then work elsewhere), and one that raises is logged and
counted without keeping the event from the others or from ingest."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from fleet_service.protocol.messages import Ack, Event, PlayStatus, Telemetry, UpdateStatus
from fleet_service.uptime.models import TransitionCause

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceiverOnline:
    """A birth for the receiver's current session: what waits for it can be sent now. Also for
    a retained birth found when the service (re)connects."""

    receiver_id: str
    session: int
    firmware: str | None
    at: datetime
    hardware: str | None = None  # its hardware family (protocol 1.2)


@dataclass(frozen=True, slots=True)
class ReceiverOffline:
    """The ledger recorded the receiver offline, and why."""

    receiver_id: str
    cause: TransitionCause
    at: datetime


@dataclass(frozen=True, slots=True)
class TelemetryReported:
    receiver_id: str
    report: Telemetry
    at: datetime


@dataclass(frozen=True, slots=True)
class ReceiverEventReported:
    receiver_id: str
    event: Event
    at: datetime


@dataclass(frozen=True, slots=True)
class CommandAcknowledged:
    receiver_id: str
    ack: Ack
    at: datetime


@dataclass(frozen=True, slots=True)
class PlayStatusReported:
    """What the receiver says it plays. ``retained``: the broker's copy from before the service
    connected, not news."""

    receiver_id: str
    status: PlayStatus
    at: datetime
    retained: bool


@dataclass(frozen=True, slots=True)
class UpdateReported:
    """Where the receiver's firmware update stands (protocol 1.2). ``retained``: the broker's
    copy from before the service connected (it may already be known)."""

    receiver_id: str
    status: UpdateStatus
    at: datetime
    retained: bool


@dataclass(frozen=True, slots=True)
class ReceiverRemoved:
    """Revoked or retired: nothing sent to it can be carried out any more."""

    receiver_id: str
    at: datetime


DomainEvent = (ReceiverOnline | ReceiverOffline | TelemetryReported | ReceiverEventReported
               | CommandAcknowledged | PlayStatusReported | UpdateReported | ReceiverRemoved)

E = TypeVar("E", ReceiverOnline, ReceiverOffline, TelemetryReported, ReceiverEventReported,
            CommandAcknowledged, PlayStatusReported, UpdateReported, ReceiverRemoved)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[type[Any], list[Callable[[Any], None]]] = {}
        # Subscriber failures by event type name: a bug in one subscriber, visible in
        # GET /ingest/status.
        self.failures: Counter[str] = Counter()

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        self._subscribers.setdefault(event_type, []).append(handler)

    def publish(self, event: DomainEvent) -> None:
        for handler in self._subscribers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                name = type(event).__name__
                self.failures[name] += 1
                log.exception("a subscriber to %s failed (%d so far)", name, self.failures[name])

    def subscribed(self, event_type: type[Any]) -> bool:
        return bool(self._subscribers.get(event_type))
