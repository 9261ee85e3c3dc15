"""What a running service holds: settings, database, broker adapters and the ingest state.
Built by the app's lifespan (or by a CLI command), never a module global."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.broker_port import BrokerAccounts, RegistryOnlyAccounts
from fleet_service.config import Settings
from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.outbox.dispatcher import OutboxDispatcher


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    broker_accounts: BrokerAccounts = field(default_factory=RegistryOnlyAccounts)
    # Set by the lifespan when the service runs its MQTT side (ingest.service.IngestService).
    ingest: Any = None
    # Set by the lifespan: the service's MQTT connection (mqtt.adapter.MqttAdapter).
    mqtt: Any = None
    # Set by the lifespan: command delivery (commands.delivery.CommandDelivery). None when the
    # API runs without its MQTT side: commands are then recorded and wait for a service that
    # delivers them.
    commands: Any = None
    # Set by the lifespan: telemetry into InfluxDB (telemetry.service.TelemetryService).
    telemetry: Any = None
    # Set by the lifespan when this process applies the outbox (the MQTT side runs here).
    outbox: OutboxDispatcher | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessions=make_sessionmaker(engine))

    def close(self) -> None:
        self.engine.dispose()
