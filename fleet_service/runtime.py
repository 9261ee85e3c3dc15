"""What a running service holds: settings, database, broker adapters and the ingest state.
Built by the app's lifespan (or by a CLI command), never a module global."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.broker_port import BrokerAccounts, RegistryOnlyAccounts
from fleet_service.config import Settings
from fleet_service.db import make_engine, make_sessionmaker

if TYPE_CHECKING:  # built by the worker's composition (fleet_service/worker/composition.py)
    from fleet_service.alerts.evaluator import AlertEvaluator
    from fleet_service.alerts.notify import Notifier
    from fleet_service.commands.delivery import CommandDelivery
    from fleet_service.ingest.service import IngestService
    from fleet_service.mqtt.adapter import MqttAdapter
    from fleet_service.outbox.dispatcher import OutboxDispatcher
    from fleet_service.rollouts.driver import RolloutDriver
    from fleet_service.schedules.sync import ScheduleSync
    from fleet_service.telemetry.service import TelemetryService


@dataclass
class Runtime:
    """The parts below ``broker_accounts`` are set while this process is the leading worker
    (fleet_service/worker/composition.py) and None otherwise: an API process answers from the
    database, never from them."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    broker_accounts: BrokerAccounts = field(default_factory=RegistryOnlyAccounts)
    ingest: IngestService | None = None
    mqtt: MqttAdapter | None = None
    commands: CommandDelivery | None = None
    schedules: ScheduleSync | None = None
    telemetry: TelemetryService | None = None
    outbox: OutboxDispatcher | None = None
    rollouts: RolloutDriver | None = None
    alerts: AlertEvaluator | None = None
    notifier: Notifier | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessions=make_sessionmaker(engine))

    def close(self) -> None:
        self.engine.dispose()
