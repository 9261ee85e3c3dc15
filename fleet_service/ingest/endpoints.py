"""Live state of the fleet ("which ones are down") and the health of ingest itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from fleet_service.auth.dependencies import CurrentPrincipal, require_roles
from fleet_service.auth.models import Role
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.ingest.repository import receivers_with_open_interval
from fleet_service.ingest.schemas import IngestStatusOut, LiveFleetOut, LiveReceiverOut, PlayingOut

router = APIRouter(tags=["live"])


@router.get("/live/receivers", response_model=LiveFleetOut)
def live_receivers(session: SessionDep, runtime: RuntimeDep, principal: CurrentPrincipal,
                   state: Annotated[str | None, Query(pattern="^(online|offline|never_seen)$")] = None) -> LiveFleetOut:
    """Every receiver the caller may see, with its connectivity now and its latest telemetry.
    ``state=offline`` answers "which ones are down"."""
    ingest = runtime.ingest
    rows = receivers_with_open_interval(session, principal.region_path)
    out: list[LiveReceiverOut] = []
    counts = {"online": 0, "offline": 0, "never_seen": 0}
    for receiver_id, station_id, station_name, _path, interval in rows:
        tracked = ingest.tracker.is_online(receiver_id) if ingest else None
        if tracked is not None:
            now_state = "online" if tracked else "offline"
        else:
            now_state = interval.state if interval is not None else "never_seen"
        counts[now_state] += 1
        if state is not None and now_state != state:
            continue
        live = ingest.telemetry.get(receiver_id) if ingest else None
        report = live.report if live else None
        play = ingest.playing.get(receiver_id) if ingest else None
        playing = None
        if play is not None:
            status, reported_at = play
            playing = PlayingOut(stream=status.stream.value, priority=status.priority.value if status.priority else None,
                                 source=status.source.value, ref=status.ref, url=status.url, volume=status.volume,
                                 why=status.why.value, schedule_version=status.schedule_version,
                                 reported_at=reported_at)
        out.append(LiveReceiverOut(
            receiver_id=receiver_id, station_id=station_id, station_name=station_name, state=now_state,
            since=interval.start_at if interval is not None and interval.state == now_state else None,
            last_heard=ingest.tracker.last_heard(receiver_id) if ingest else None,
            signal_dbm=report.signal_dbm if report else None,
            temperature_c=report.temperature_c if report else None,
            supply_v=report.supply_v if report else None,
            amplifier=report.amplifier.value if report else None,
            stream=report.stream.value if report else None,
            firmware=report.firmware if report else None,
            clock_skew_s=round(live.clock_skew_s, 1) if live else None,
            playing=playing,
        ))
    return LiveFleetOut(receivers=out, **counts)


@router.get("/ingest/status", response_model=IngestStatusOut,
            dependencies=[Depends(require_roles(Role.TECHNICIAN))])
def ingest_status(runtime: RuntimeDep) -> IngestStatusOut:
    ingest = runtime.ingest
    mqtt = runtime.mqtt
    if ingest is None:
        return IngestStatusOut(mqtt_connected=False, mqtt_connections=0, tracked_receivers=0, stale_messages=0,
                               unobserved_outages=0, ledger_backlog=0, counters={})
    outbox = runtime.outbox
    return IngestStatusOut(
        mqtt_connected=bool(mqtt and mqtt.connected.is_set()),
        mqtt_connections=mqtt.connections if mqtt else 0,
        mqtt_client_id=mqtt.client_id if mqtt else None,
        outbox_applied=outbox.counters.applied if outbox else 0,
        outbox_failures=outbox.counters.failures if outbox else 0,
        tracked_receivers=len(ingest.tracker),
        stale_messages=ingest.tracker.stale_messages,
        unobserved_outages=ingest.tracker.unobserved_outages,
        ledger_backlog=ingest.ledger_backlog,
        counters=ingest.counters.as_dict(),
    )
