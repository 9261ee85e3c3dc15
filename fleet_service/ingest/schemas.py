from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class LiveReceiverOut(BaseModel):
    receiver_id: str
    station_id: int | None
    station_name: str | None
    # online / offline / never_seen
    state: str
    since: datetime | None
    last_heard: datetime | None
    signal_dbm: int | None = None
    temperature_c: float | None = None
    supply_v: float | None = None
    amplifier: str | None = None
    stream: str | None = None
    firmware: str | None = None
    clock_skew_s: float | None = None
    playing: PlayingOut | None = None


class PlayingOut(BaseModel):
    """What the receiver last said it plays (its retained play status), and why."""

    stream: str
    priority: str | None
    source: str            # cmd / sched / none
    ref: str | None        # the command id or schedule slot id
    url: str | None
    volume: int
    why: str
    schedule_version: int | None
    reported_at: datetime


LiveReceiverOut.model_rebuild()


class LiveFleetOut(BaseModel):
    online: int
    offline: int
    never_seen: int
    receivers: list[LiveReceiverOut]


class IngestStatusOut(BaseModel):
    mqtt_connected: bool
    mqtt_connections: int
    # This process's own MQTT client id (one per process; see docs/security.md).
    mqtt_client_id: str | None = None
    # Side effects on the broker applied from the outbox, and failed attempts (retried).
    outbox_applied: int = 0
    outbox_failures: int = 0
    # Firmware rollouts driven by this worker: update offers made, receivers' update reports
    # written, and checks or writes that failed (retried at the next turn).
    rollout_offers: int = 0
    rollout_reports: int = 0
    rollout_failures: int = 0
    # Alert rules: evaluations done, incidents raised (notified ones), turns that failed.
    alert_turns: int = 0
    alerts_raised: int = 0
    alert_failures: int = 0
    # Notifications to the crews sent, and failed attempts (retried with backoff).
    notifications_sent: int = 0
    notification_failures: int = 0
    tracked_receivers: int
    stale_messages: int
    unobserved_outages: int
    ledger_backlog: int
    counters: dict[str, object]
    # When the leading worker reported these figures, for a process that does not run the MQTT
    # side itself; None: this process's own, as of now.
    reported_at: datetime | None = None
