"""Live state of the fleet ("which ones are down") and the health of ingest itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from fleet_service.auth.dependencies import CurrentPrincipal, require_roles
from fleet_service.auth.models import Role
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.ingest.repository import receivers_with_open_interval
from fleet_service.ingest.schemas import IngestStatusOut, LiveFleetOut, LiveReceiverOut, PlayingOut

router = APIRouter(tags=["live"])


@router.get("/live/receivers", response_model=LiveFleetOut)
def live_receivers(session: SessionDep, principal: CurrentPrincipal,
                   state: Annotated[str | None, Query(pattern="^(online|offline|never_seen)$")] = None) -> Response:
    """Every receiver the caller may see, with its connectivity now and its latest telemetry.
    ``state=offline`` answers "which ones are down". Read from the live state the leading
    worker writes (docs/architecture.md gives its lag), so every API process answers the
    same."""
    out: list[LiveReceiverOut] = []
    counts = {"online": 0, "offline": 0, "never_seen": 0}
    for (receiver_id, station_id, station_name, interval_state, interval_start, online, heard_at, signal_dbm,
         temperature_c, supply_v, amplifier, stream, firmware, clock_skew_s, playing) in \
            receivers_with_open_interval(session, principal.region_path):
        if online is not None:
            now_state = "online" if online else "offline"
        else:
            now_state = interval_state if interval_state is not None else "never_seen"
        counts[now_state] += 1
        if state is not None and now_state != state:
            continue
        out.append(LiveReceiverOut(
            receiver_id=receiver_id, station_id=station_id, station_name=station_name, state=now_state,
            since=interval_start if interval_state == now_state else None, last_heard=heard_at,
            signal_dbm=signal_dbm, temperature_c=temperature_c, supply_v=supply_v, amplifier=amplifier,
            stream=stream, firmware=firmware, clock_skew_s=clock_skew_s,
            playing=PlayingOut.model_validate(playing) if playing else None,
        ))
    # Serialised here, once: returned as a model, it would be validated again field by field
    # (a third of the answer's time for a province of 10,000 receivers).
    return Response(LiveFleetOut(receivers=out, **counts).model_dump_json(), media_type="application/json")


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
