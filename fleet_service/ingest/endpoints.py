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
def live_receivers(session: SessionDep, principal: CurrentPrincipal,
                   state: Annotated[str | None, Query(pattern="^(online|offline|never_seen)$")] = None) -> LiveFleetOut:
    """Every receiver the caller may see, with its connectivity now and its latest telemetry.
    ``state=offline`` answers "which ones are down". Read from the live state the leading
    worker writes (at most about 2 s behind), so every API process answers the same."""
    rows = receivers_with_open_interval(session, principal.region_path)
    out: list[LiveReceiverOut] = []
    counts = {"online": 0, "offline": 0, "never_seen": 0}
    for receiver_id, station_id, station_name, _path, interval, live in rows:
        if live is not None:
            now_state = "online" if live.online else "offline"
        else:
            now_state = interval.state if interval is not None else "never_seen"
        counts[now_state] += 1
        if state is not None and now_state != state:
            continue
        out.append(LiveReceiverOut(
            receiver_id=receiver_id, station_id=station_id, station_name=station_name, state=now_state,
            since=interval.start_at if interval is not None and interval.state == now_state else None,
            last_heard=live.heard_at if live else None,
            signal_dbm=live.signal_dbm if live else None,
            temperature_c=live.temperature_c if live else None,
            supply_v=live.supply_v if live else None,
            amplifier=live.amplifier if live else None,
            stream=live.stream if live else None,
            firmware=live.firmware if live else None,
            clock_skew_s=live.clock_skew_s if live else None,
            playing=PlayingOut.model_validate(live.playing) if live is not None and live.playing else None,
        ))
    return LiveFleetOut(receivers=out, **counts)


@router.get("/ingest/status", response_model=IngestStatusOut,
            dependencies=[Depends(require_roles(Role.TECHNICIAN))])
def ingest_status(runtime: RuntimeDep, session: SessionDep) -> IngestStatusOut:
    """The MQTT side's figures: of this process when it is the leading worker, otherwise as the
    leading worker last reported them (``reported_at``, every second)."""
    from fleet_service.worker.status import ingest_status_here, read_report

    here = ingest_status_here(runtime)
    if here is not None:
        return here
    report = read_report(session)
    if report is None or report.ingest is None:
        return IngestStatusOut(mqtt_connected=False, mqtt_connections=0, tracked_receivers=0, stale_messages=0,
                               unobserved_outages=0, ledger_backlog=0, counters={})
    return report.ingest.model_copy(update={"reported_at": report.at})
