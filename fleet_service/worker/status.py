"""The leading worker's report of itself (MQTT connection, ingest, outbox and telemetry
counters), written to the database every REPORT_INTERVAL_S so that every API process answers
``GET /ingest/status`` and ``GET /telemetry/status`` with the same figures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from fleet_service.db import session_scope, utcnow
from fleet_service.ingest.schemas import IngestStatusOut
from fleet_service.runtime import Runtime
from fleet_service.telemetry.schemas import TelemetryStatusOut
from fleet_service.worker.models import WorkerStatus

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0
# One leader, one report: the row is named after the role, not the process.
REPORT_NAME = "leader"


def ingest_status_here(runtime: Runtime) -> IngestStatusOut | None:
    """The figures of this process's own MQTT side; None where it does not run."""
    ingest, mqtt, outbox, rollouts, alerts = runtime.ingest, runtime.mqtt, runtime.outbox, runtime.rollouts, runtime.alerts
    if ingest is None:
        return None
    counters: dict[str, object] = ingest.counters.as_dict()
    counters["subscriber_failures"] = dict(ingest.events.failures)
    return IngestStatusOut(
        mqtt_connected=bool(mqtt and mqtt.connected.is_set()),
        mqtt_connections=mqtt.connections if mqtt else 0,
        mqtt_client_id=mqtt.client_id if mqtt else None,
        outbox_applied=outbox.counters.applied if outbox else 0,
        outbox_failures=outbox.counters.failures if outbox else 0,
        rollout_offers=rollouts.offered if rollouts else 0,
        rollout_reports=rollouts.reports if rollouts else 0,
        rollout_failures=rollouts.failures if rollouts else 0,
        alert_turns=alerts.turns if alerts else 0,
        alerts_raised=alerts.raised if alerts else 0,
        alert_failures=alerts.failures if alerts else 0,
        notifications_sent=runtime.notifier.sent if runtime.notifier else 0,
        notification_failures=runtime.notifier.failures if runtime.notifier else 0,
        tracked_receivers=len(ingest.tracker),
        stale_messages=ingest.tracker.stale_messages,
        unobserved_outages=ingest.tracker.unobserved_outages,
        ledger_backlog=ingest.ledger_backlog,
        counters=counters,
    )


@dataclass(frozen=True)
class Report:
    holder: str
    at: datetime
    ingest: IngestStatusOut | None
    telemetry: TelemetryStatusOut | None


def read_report(session: Session) -> Report | None:
    row = session.get(WorkerStatus, REPORT_NAME)
    if row is None:
        return None
    ingest, telemetry = row.status.get("ingest"), row.status.get("telemetry")
    return Report(row.holder, row.updated_at,
                  IngestStatusOut.model_validate(ingest) if ingest else None,
                  TelemetryStatusOut.model_validate(telemetry) if telemetry else None)


def _snapshot(runtime: Runtime) -> dict[str, Any]:
    ingest = ingest_status_here(runtime)
    telemetry = runtime.telemetry.status() if runtime.telemetry is not None else None
    return {"ingest": ingest.model_dump(mode="json") if ingest else None,
            "telemetry": telemetry.model_dump(mode="json") if telemetry else None}


def _write(runtime: Runtime, holder: str, status: dict[str, Any]) -> None:
    with session_scope(runtime.sessions) as session:
        row = session.get(WorkerStatus, REPORT_NAME)
        if row is None:
            session.add(WorkerStatus(name=REPORT_NAME, holder=holder, status=status, updated_at=utcnow()))
        else:
            row.holder, row.status, row.updated_at = holder, status, utcnow()


async def _report(runtime: Runtime, holder: str) -> None:
    try:
        await asyncio.to_thread(_write, runtime, holder, _snapshot(runtime))
    except Exception as exc:  # the database is down: the next turn tries again
        log.warning("worker status not written (%s)", exc.__class__.__name__)


@asynccontextmanager
async def run_status_reporter(runtime: Runtime, holder: str) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            await _report(runtime, holder)
            await asyncio.sleep(REPORT_INTERVAL_S)

    task = asyncio.create_task(loop(), name="worker-status")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _report(runtime, holder)  # the last figures, as the worker leaves
