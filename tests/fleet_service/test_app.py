"""The application as a whole: request bodies are bounded before anything else reads them, and
the API docs work with no network (their scripts and styles are served by the service)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from fleet_service.app import create_app
from fleet_service.config import Settings
from fleet_service.runtime import Runtime

LIMIT = 64 * 1024
CHUNK = 64 * 1024
HUNDRED_MB = 100 * 1024 * 1024


@pytest.fixture
def runtime(sqlite_url: str) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test", api_max_body_bytes=LIMIT))
    yield runtime
    runtime.close()


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime=runtime, mqtt=False)
    app.state.runtime = runtime
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loa") as client:
        yield client


class Body:
    """A request body produced as it is read, noting how much the service pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"x" * CHUNK


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "too_large"
    assert "quá lớn" in error["message"] and "too large" in error["message_en"]
    assert str(LIMIT) in error["message"] and str(LIMIT) in error["message_en"]


async def test_a_body_announced_too_large_is_refused_before_authentication_and_unread(api):
    body = Body(HUNDRED_MB)
    response = await api.post("/api/v1/regions", content=body,
                              headers={"Content-Length": str(HUNDRED_MB), "Content-Type": "application/json"})
    assert_too_large(response)  # not 401: no token was sent, and it was never asked for
    assert body.pulled <= CHUNK


async def test_a_chunked_body_is_refused_once_it_passes_the_limit_without_reading_the_rest(api):
    body = Body(HUNDRED_MB)
    response = await api.post("/api/v1/regions", content=body, headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers  # sent chunked
    assert_too_large(response)
    assert body.pulled <= LIMIT + 2 * CHUNK


async def test_the_sign_in_form_is_bounded_too(api):
    body = Body(HUNDRED_MB)
    response = await api.post("/api/v1/auth/token", content=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_too_large(response)
    assert body.pulled <= LIMIT + 2 * CHUNK


async def test_bodies_within_the_limit_go_through(api):
    fits = b'{"name": "' + b"a" * (LIMIT - 100) + b'", "level": "xa"}'
    response = await api.post("/api/v1/regions", content=fits, headers={"Content-Type": "application/json"})
    assert response.status_code == 401  # on to authentication, as before


def test_the_default_limit_fits_the_largest_legitimate_body_with_margin():
    """A schedule is the largest body the API takes: 24 slots, each with a 256-character URL
    and a 200-character label all in Vietnamese escapes. An inventory of a whole province
    (about 200 communes with their stations, as seed_data/dai_tu.yaml is for 29) fits too."""
    from fleet_service.protocol.messages import SCHEDULE_MAX_SLOTS, URL_MAX
    from fleet_service.schedules.schemas import ScheduleCreate
    from fleet_service.registry.service import demo_inventory
    import json

    slot = {"start": "05:30:00", "end": "06:00:00", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "url": "http://127.0.0.1/" + "a" * (URL_MAX - 17), "priority": "normal", "valid_from": "2026-01-01",
            "valid_to": "2026-12-31", "volume": 100, "label": "Đ" * 200}
    schedule = {"name": "Đ" * 200, "station": 2**31 - 1, "slots": [slot] * SCHEDULE_MAX_SLOTS}
    # Validated without its dates, which the schedule's own checks handle separately.
    ScheduleCreate.model_validate({**schedule, "slots": [{k: v for k, v in slot.items() if not k.startswith("valid")}]})
    largest_schedule = len(json.dumps(schedule).encode())  # ensure_ascii: every Đ is 6 bytes
    province = len(json.dumps(demo_inventory()).encode()) * 200 // 29
    default = Settings(environment="test").api_max_body_bytes
    assert default == 1024 * 1024
    assert max(largest_schedule, province) * 4 < default


# --- the API docs, offline ------------------------------------------------------------------

def _referenced(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html) + \
        re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_use_only_the_services_own_assets(api, page):
    response = await api.get(page)
    assert response.status_code == 200
    html = response.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html, html
    assets = _referenced(html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        served = await api.get(asset)
        assert served.status_code == 200, asset
        assert served.content, asset


async def test_the_sign_in_redirect_of_the_docs_is_served(api):
    response = await api.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "oauth2" in response.text.lower()


async def test_a_missing_docs_asset_is_refused_in_the_usual_shape(api):
    response = await api.get("/static/docs/nope.js")
    assert response.status_code == 404
    assert response.json()["error"]["message_en"]
