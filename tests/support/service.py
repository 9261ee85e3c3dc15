"""The service's MQTT side (embedded broker by default, ingest, ledger) in the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select

from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.worker.composition import run_mqtt_side
from fleet_service.runtime import Runtime
from fleet_service.uptime.models import ConnectivityInterval
from tests.support.ports import free_port


def service_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(database_url=database_url, environment="test", mqtt_port=free_port(),
                                  mqtt_password="service-secret-for-tests", inactivity_timeout_s=600,
                                  startup_grace_s=0, mqtt_keepalive_s=5, alert_eval_interval_s=2)
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime.from_settings(settings)
    try:
        async with run_mqtt_side(runtime):
            yield runtime
    finally:
        runtime.close()


def ledger(runtime: Runtime, receiver_id: str) -> list[ConnectivityInterval]:
    with session_scope(runtime.sessions) as session:
        return list(session.scalars(select(ConnectivityInterval)
                                    .where(ConnectivityInterval.receiver_id == receiver_id)
                                    .order_by(ConnectivityInterval.start_at, ConnectivityInterval.id)))


def mosquitto_settings(database_url: str, broker: Any, **overrides: Any) -> Settings:
    """Settings for a service on a test Mosquitto (tests/support/mosquitto_production.py)."""
    return service_settings(database_url, broker="mosquitto", mqtt_port=broker.port,
                            mqtt_username=broker.service_username, mqtt_password=broker.service_password,
                            mosquitto_admin_username=broker.admin_username,
                            mosquitto_admin_password=broker.admin_password, **overrides)


def outbox_drained(runtime: Runtime) -> bool:
    """Every side effect recorded so far (broker logins, registry changes) is applied."""
    from fleet_service.outbox.repository import pending_count

    with session_scope(runtime.sessions) as session:
        return pending_count(session) == 0
