"""GET /api/v1/telemetry/status: for technicians and admins; says plainly when nothing is written."""

from __future__ import annotations

import httpx

from fleet_service.ingest.events import TelemetryReported
from tests.fleet_service.telemetry.conftest import running_app
from tests.support.service import service_settings


async def test_without_an_influx_url_telemetry_is_not_written_and_the_status_says_so(sqlite_url, tmp_path):
    async with running_app(service_settings(sqlite_url, influx_buffer_dir=str(tmp_path / "buffer"))) as (
            app, runtime, client):
        response = await client.get("/api/v1/telemetry/status")
        assert response.status_code == 200
        body = response.json()
        assert body["enabled"] is False and body["written"] == 0
        assert "LOA_INFLUX_URL" in body["message"] and "không ghi" in body["message"].lower()
        assert runtime.ingest.events.subscribed(TelemetryReported)  # ingest hands over; nothing queues
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loa.test") as anonymous:
            assert (await anonymous.get("/api/v1/telemetry/status")).status_code == 401
    assert not (tmp_path / "buffer").exists()
