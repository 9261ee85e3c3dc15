"""Health of the telemetry writer: what reached InfluxDB, what waits on disk, what was lost."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from fleet_service.auth.dependencies import require_roles
from fleet_service.auth.models import Role
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.telemetry.schemas import TelemetryStatusOut
from fleet_service.telemetry.service import disabled_status

router = APIRouter(tags=["telemetry"])


@router.get("/telemetry/status", response_model=TelemetryStatusOut,
            dependencies=[Depends(require_roles(Role.TECHNICIAN))])
def telemetry_status(runtime: RuntimeDep, session: SessionDep) -> TelemetryStatusOut:
    """Of this process when it is the leading worker, otherwise as the leading worker last
    reported it (every second)."""
    from fleet_service.worker.status import read_report

    telemetry = runtime.telemetry
    if telemetry is not None:
        return telemetry.status()
    report = read_report(session)
    if report is not None and report.telemetry is not None:
        return report.telemetry
    return disabled_status("not running")
