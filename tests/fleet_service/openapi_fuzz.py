"""The whole OpenAPI, exercised by schemathesis with valid and invalid data, as an admin and
unauthenticated: no answer is a server error, and every refusal is the one bilingual error
shape operators read ({"error": {"code", "message", "message_en"}})."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import select

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.auth.models import ApiToken, User
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.migrations import upgrade
from fleet_service.runtime import Runtime
from schemathesis.generation import GenerationMode
from tests.support.fleet import provision_fleet

# Examples per operation and generation mode: enough to reach every field's edge cases, few
# enough that the whole API is covered in well under a minute.
MAX_EXAMPLES = 6

_REQUEST_FIELDS = ("method", "url", "headers", "params", "cookies", "data", "json", "files")


class Api:
    def __init__(self, runtime: Runtime, client: TestClient) -> None:
        self.runtime = runtime
        self.client = client
        self._token: str | None = None

    def admin_headers(self) -> dict[str, str]:
        """A valid admin token; made anew when a generated request revoked the current one or
        disabled the admin, so that every later request is still made as an admin."""
        with session_scope(self.runtime.sessions) as session:
            admin = session.scalar(select(User).where(User.username == "admin"))
            assert admin is not None
            admin.active = True
            valid = self._token is not None and session.scalar(
                select(ApiToken.id).where(ApiToken.token_hash == auth.token_hash(self._token),
                                          ApiToken.revoked_at.is_(None)))
            if not valid:
                self._token = auth.issue_token(session, admin.id, "schemathesis")[1]
        return {"Authorization": f"Bearer {self._token}"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'loa.db'}"
    upgrade(url)
    settings = Settings(database_url=url, environment="test")
    runtime = Runtime.from_settings(settings)
    provision_fleet(runtime.sessions, receivers=4, stations=2)
    with session_scope(runtime.sessions) as session:
        auth.create_user(session, "admin", role="admin", password="mật khẩu quản trị 1")
    # A server error fails the test with its traceback.
    with TestClient(create_app(settings, mqtt=False)) as client:
        yield Api(runtime, client)
    runtime.close()


# The description is the app's own; the requests go to the app of the `api` fixture, on its
# seeded database (schemathesis' lazy loading from a fixture does not run under pytest 9).
_OPENAPI = create_app(Settings(environment="test"), mqtt=False).openapi()
# The operations of these HTTP methods only, when set (test_openapi.py runs the GETs and the
# others side by side); all of them otherwise.
METHODS_ENV = "LOA_OPENAPI_FUZZ_METHODS"


def _operations() -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_dict(_OPENAPI)
    methods = os.environ.get(METHODS_ENV)
    return loaded.include(method=methods.split(",")) if methods else loaded


schema = _operations()
schema.config.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES)
# Without a token nearly every operation is refused at its login check, so fewer requests tell
# as much: two valid and two invalid per operation, without the coverage phase's boundary cases
# (which, here too, would cost about as much as the admin's whole run).
anonymous_schema = _operations()
anonymous_schema.config.generation.update(modes=list(GenerationMode), max_examples=2)
anonymous_schema.config.phases.coverage.enabled = False

# Path parameters that name what the seeded fleet has, so that generated requests also reach
# past the lookup (a random receiver id is only ever a 404).
_EXISTING = {"receiver_id": ["rx-0", "rx-1", "rx-2", "rx-3"], "station_id": [1, 2], "region_id": [1, 2],
             "username": ["admin"], "token_id": [1]}


@schema.hook
def flatmap_path_parameters(_context, parameters):  # type: ignore[no-untyped-def]
    known = {name: st.sampled_from(_EXISTING[name]) for name in parameters or () if name in _EXISTING}
    if not known:
        return st.just(parameters)
    return st.one_of(st.just(parameters), st.fixed_dictionaries(known).map(lambda k: {**parameters, **k}))


def _call(client: TestClient, case, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Send the case through Starlette's test client: schemathesis' own ASGI transport reads
    requests' connection pools, which urllib3-future (installed with niquests) replaces."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    request = requests.Request(**{k: kwargs[k] for k in _REQUEST_FIELDS if k in kwargs}).prepare()
    return client.request(request.method, request.url, headers=dict(request.headers), content=request.body)


def _check(response, case) -> None:  # type: ignore[no-untyped-def]
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:2000]}"
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"}, f"{where}: {response.text[:2000]}"
        error = body["error"]
        for key in ("code", "message", "message_en"):
            assert isinstance(error.get(key), str) and error[key], f"{where}: {key} missing in {response.text}"


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_as_admin(case, api: Api) -> None:  # type: ignore[no-untyped-def]
    _check(_call(api.client, case, api.admin_headers()), case)


@anonymous_schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None)
def test_unauthenticated(case, api: Api) -> None:  # type: ignore[no-untyped-def]
    _check(_call(api.client, case), case)
