"""The composition root of the worker role: builds the broker adapter (embedded by default),
ingest, command delivery, schedule sync, telemetry and the outbox dispatcher, and wires them
together. The one place where domain code meets: subscribers to ingest's domain events
(ingest.events) and the outbox's side effects are registered here, and nowhere else; the
domains do not call each other by name."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from broker.embedded import EmbeddedBroker, LoginLimiter, LoginRules, TlsListener
from fleet_service.alerts.counts import EventCounter
from fleet_service.alerts.evaluator import AlertEvaluator
from fleet_service.alerts.notify import Notifier
from fleet_service.broker_port import BrokerAccounts, RegistryOnlyAccounts
from fleet_service.commands.delivery import CommandDelivery
from fleet_service.commands.service import Created
from fleet_service.db import session_scope
from fleet_service.ingest.events import (
    CommandAcknowledged,
    EventBus,
    ReceiverEventReported,
    ReceiverOnline,
    ReceiverRemoved,
    TelemetryReported,
    UpdateReported,
)
from fleet_service.ingest.service import IngestService
from fleet_service.mqtt.adapter import MqttAdapter
from fleet_service.outbox.dispatcher import Handler, OutboxDispatcher
from fleet_service.outbox.service import OutboxKind
from fleet_service.rollouts.driver import RolloutDriver
from fleet_service.runtime import Runtime
from fleet_service.schedules.sync import ScheduleSync
from fleet_service.telemetry.service import TelemetryService, run_telemetry
from fleet_service.worker.status import run_status_reporter

log = logging.getLogger(__name__)


class FleetAccounts:
    """Tells the broker about logins, and ingest about receivers that come and go."""

    def __init__(self, broker: BrokerAccounts, ingest: IngestService, loop: asyncio.AbstractEventLoop) -> None:
        self._broker = broker
        self._ingest = ingest
        self._loop = loop

    def add_receiver(self, receiver_id: str, password: str) -> None:
        self._broker.add_receiver(receiver_id, password)
        self._loop.call_soon_threadsafe(self._ingest.forget_unknown, receiver_id)

    def remove_receiver(self, receiver_id: str) -> None:
        self._broker.remove_receiver(receiver_id)
        self._loop.call_soon_threadsafe(self._ingest.receiver_revoked, receiver_id)


# --- subscribers to ingest's domain events --------------------------------------------------

def subscribe(events: EventBus, *, commands: CommandDelivery, schedules: ScheduleSync,
              telemetry: TelemetryService | None, rollouts: RolloutDriver | None = None,
              counts: EventCounter | None = None) -> None:
    """Who hears what of the receivers. Alerts and firmware updates subscribe here too."""
    events.subscribe(ReceiverOnline, lambda e: commands.on_birth(e.receiver_id))
    events.subscribe(CommandAcknowledged, lambda e: commands.on_ack(e.receiver_id, e.ack, e.at))
    events.subscribe(ReceiverRemoved, lambda e: commands.receiver_removed(e.receiver_id))
    events.subscribe(ReceiverOnline, lambda e: schedules.on_birth(e.receiver_id))
    if rollouts is not None:  # firmware updates: offers at births, and what receivers report
        events.subscribe(ReceiverOnline, lambda e: rollouts.on_birth(e.receiver_id))
        events.subscribe(UpdateReported, lambda e: rollouts.on_status(e.receiver_id, e.status, e.at))
        events.subscribe(CommandAcknowledged, lambda e: rollouts.on_ack(e.receiver_id, e.ack, e.at))
    if counts is not None:  # what the alert rules over events count: added up in memory
        events.subscribe(TelemetryReported, counts.on_telemetry)
        events.subscribe(ReceiverEventReported, counts.on_event)
        events.subscribe(ReceiverRemoved, lambda e: counts.forget(e.receiver_id))
    if telemetry is not None:  # queued only: the writer works in its own thread
        events.subscribe(TelemetryReported, lambda e: telemetry.submit(e.receiver_id, e.report, e.at))
        events.subscribe(ReceiverEventReported, lambda e: telemetry.submit(e.receiver_id, e.event, e.at))


# --- the outbox's side effects --------------------------------------------------------------

def broker_login_handlers(accounts: BrokerAccounts) -> dict[OutboxKind, Handler]:
    """The outbox's side effects on the broker's logins."""
    return {
        OutboxKind.RECEIVER_LOGIN_SET: lambda receiver_id, payload: accounts.add_receiver(
            receiver_id, payload.get("password", "")),
        OutboxKind.RECEIVER_LOGIN_REMOVED: lambda receiver_id, _payload: accounts.remove_receiver(receiver_id),
    }


def registry_change_handler(sessions: sessionmaker[Session], loop: asyncio.AbstractEventLoop, *,
                            ingest: IngestService, schedules: ScheduleSync,
                            telemetry: TelemetryService | None) -> Handler:
    """A region, station or receiver changed place (outbox.OutboxKind.REGISTRY_CHANGED):
    telemetry is tagged anew at once, ingest records the receivers' next intervals under their
    new station, and their schedules are brought up to date (a moved region may fall under
    other schedules). Runs in a worker thread; the event loop's objects are told through it."""
    from fleet_service.registry.service import active_receivers_of

    def apply(subject: str, _payload: Mapping[str, Any]) -> None:
        with session_scope(sessions) as session:
            receiver_ids = active_receivers_of(session, subject)
        if telemetry is not None:
            telemetry.tags.invalidate()
        loop.call_soon_threadsafe(ingest.registry_changed, receiver_ids)
        loop.call_soon_threadsafe(schedules.check, receiver_ids)

    return apply


def release_withdrawn_handler(sessions: sessionmaker[Session]) -> Handler:
    """A firmware release was withdrawn (outbox.OutboxKind.FIRMWARE_RELEASE_WITHDRAWN): every
    rollout using it stops, and its receivers not offered it yet are not offered it."""
    from fleet_service.rollouts.service import withdraw_release

    def apply(subject: str, _payload: Mapping[str, Any]) -> None:
        with session_scope(sessions) as session:
            stopped = withdraw_release(session, int(subject.removeprefix("release:")))
        if stopped:
            log.info("rollouts %s stopped: their release (%s) was withdrawn", stopped, subject)

    return apply


# --- the broker -----------------------------------------------------------------------------

def _verifier(sessions: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    from fleet_service.registry.service import verify_receiver_password

    def verify(receiver_id: str, password: str) -> bool:
        with session_scope(sessions) as session:
            return verify_receiver_password(session, receiver_id, password)

    return verify


def _mosquitto_accounts(runtime: Runtime) -> BrokerAccounts:
    """Connect to Mosquitto's dynamic security as admin, make sure the roles and the service's
    own login exist, and bring the broker's receiver logins in line with the registry."""
    from broker.mosquitto_dynsec import MosquittoDynsec, bootstrap_broker
    from fleet_service.ingest.repository import IngestRepository

    settings = runtime.settings
    accounts = MosquittoDynsec(settings.mqtt_host, settings.mqtt_port, settings.mosquitto_admin_username,
                               settings.mosquitto_admin_password).start(wait=30)
    bootstrap_broker(accounts, settings.mqtt_username, settings.mqtt_password)
    with session_scope(runtime.sessions) as session:
        active = set(IngestRepository(session).active_receivers())
    missing = accounts.sync(active)
    if missing:
        log.warning("%d active receivers have no login on Mosquitto and must be provisioned again: %s",
                    len(missing), ", ".join(missing[:20]))
    return accounts


def _embedded_broker(runtime: Runtime) -> EmbeddedBroker:
    settings = runtime.settings
    limiter = LoginLimiter(settings.mqtt_login_failures_per_address, settings.mqtt_login_failures_per_receiver)
    rules = LoginRules(settings.mqtt_username, settings.mqtt_password, _verifier(runtime.sessions), limiter)
    tls = None
    if settings.mqtt_tls_port is not None:
        tls = TlsListener(settings.mqtt_tls_host, settings.mqtt_tls_port, settings.mqtt_tls_certfile,
                          settings.mqtt_tls_keyfile)
    return EmbeddedBroker(settings.mqtt_host, settings.mqtt_port, rules, tls=tls,
                          max_packet_bytes=settings.mqtt_max_packet_bytes)


# CPython's cyclic garbage collector during bursts (a fleet-wide command, a province coming back):
# paho allocates several tracked objects per message (each publish a threading.Condition), so
# the default young-generation threshold of 700 collects every few dozen messages, and objects
# still in flight are promoted and traversed again and again (measured: about a quarter of the
# service's time in a play to 10,000 receivers; bench/RESULTS.md). What was loaded at start-up
# is frozen out of the collector's view, and the young generation is collected less often;
# memory is still reclaimed, by reference counting at once and by the collector in larger steps.
GC_THRESHOLD_GEN0 = 50_000


def _tune_gc() -> None:
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD_GEN0, gen1, gen2)


@asynccontextmanager
async def run_mqtt_side(runtime: Runtime, *, wait_connected_s: float = 15.0,
                        client_id: str | None = None) -> AsyncIterator[None]:
    """The broker adapter, ingest, delivery, schedules and the outbox, for as long as the block
    runs. Telemetry, when ``runtime.telemetry`` is running, is handed what ingest hears."""
    settings = runtime.settings
    _tune_gc()
    embedded: EmbeddedBroker | None = None
    broker_accounts: BrokerAccounts
    if settings.broker == "embedded":
        embedded = _embedded_broker(runtime)
        await embedded.start()
        broker_accounts = embedded.accounts()
    elif settings.broker == "mosquitto":
        broker_accounts = await asyncio.to_thread(_mosquitto_accounts, runtime)
    else:
        broker_accounts = RegistryOnlyAccounts()

    loop = asyncio.get_running_loop()
    events = EventBus()
    ingest = IngestService(
        runtime.sessions, events,
        inactivity_timeout=timedelta(seconds=settings.inactivity_timeout_s),
        grace=timedelta(seconds=settings.startup_grace_s),
        max_payload_bytes=settings.max_payload_bytes,
    )
    adapter = MqttAdapter(settings, ingest, client_id)
    commands = CommandDelivery(runtime.sessions, publish=adapter.publish, is_online=ingest.tracker.is_online)
    outbox: OutboxDispatcher | None = None

    def hand_over(made: Created) -> None:  # the schedule commands go out the commands' one way
        commands.prepare(made)
        if outbox is not None:
            outbox.wake()

    schedules = ScheduleSync(runtime.sessions, submit=hand_over)
    rollouts = RolloutDriver(runtime.sessions, settings, submit=hand_over)
    notifier = Notifier(runtime.sessions, settings)
    alerts = AlertEvaluator(runtime.sessions, on_raised=lambda _result: notifier.wake(),
                            interval_s=settings.alert_eval_interval_s)
    counts = EventCounter(runtime.sessions)
    subscribe(events, commands=commands, schedules=schedules, telemetry=runtime.telemetry, rollouts=rollouts,
              counts=counts)
    accounts = FleetAccounts(broker_accounts, ingest, loop)
    outbox = OutboxDispatcher(runtime.sessions, {
        **broker_login_handlers(accounts),
        OutboxKind.COMMAND_CREATED: lambda command_id, _payload: commands.deliver_recorded(command_id),
        OutboxKind.REGISTRY_CHANGED: registry_change_handler(runtime.sessions, loop, ingest=ingest,
                                                             schedules=schedules, telemetry=runtime.telemetry),
        OutboxKind.FIRMWARE_RELEASE_WITHDRAWN: release_withdrawn_handler(runtime.sessions),
    })

    await ingest.start()
    await commands.start()
    await outbox.start()
    await schedules.start()
    await rollouts.start()
    await counts.start()
    await alerts.start()
    await notifier.start()
    runtime.ingest, runtime.mqtt, runtime.commands, runtime.outbox = ingest, adapter, commands, outbox
    runtime.schedules, runtime.rollouts, runtime.alerts, runtime.notifier = schedules, rollouts, alerts, notifier
    runtime.broker_accounts = accounts
    task = asyncio.create_task(adapter.run(), name="mqtt-adapter")
    try:
        try:
            await asyncio.wait_for(adapter.connected.wait(), timeout=wait_connected_s)
        except TimeoutError:
            # Keep serving the API; the adapter goes on retrying and says so in the log.
            log.error("not connected to the MQTT broker after %.0f s; still trying", wait_connected_s)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runtime.outbox = None
        await outbox.stop()
        runtime.commands, runtime.rollouts, runtime.alerts, runtime.notifier = None, None, None, None
        await notifier.stop()
        await alerts.stop()
        await rollouts.stop()
        await schedules.stop()
        await commands.stop()
        await ingest.stop()
        await counts.stop()  # after ingest: its last counts are written
        close = getattr(broker_accounts, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
        if embedded is not None:
            await embedded.stop()


@asynccontextmanager
async def run_worker_side(runtime: Runtime, *, client_id: str) -> AsyncIterator[None]:
    """Everything the leading worker runs. Telemetry starts first and stops last, so that
    ingest's last messages are written; the status report follows the rest."""
    async with run_telemetry(runtime), run_mqtt_side(runtime, client_id=client_id), \
            run_status_reporter(runtime, client_id):
        yield
