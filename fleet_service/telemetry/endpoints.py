"""Health of the telemetry writer: what reached InfluxDB, what waits on disk, what was lost."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from fleet_service.auth.dependencies import require_roles
from fleet_service.auth.models import Role
from fleet_service.deps import RuntimeDep
from fleet_service.telemetry.schemas import TelemetryStatusOut
from fleet_service.telemetry.service import disabled_status

router = APIRouter(tags=["telemetry"])


@router.get("/telemetry/status", response_model=TelemetryStatusOut,
            dependencies=[Depends(require_roles(Role.TECHNICIAN))])
def telemetry_status(runtime: RuntimeDep) -> TelemetryStatusOut:
    telemetry = runtime.telemetry
    return telemetry.status() if telemetry is not None else disabled_status("not running")
