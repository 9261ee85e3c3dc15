from __future__ import annotations

import faulthandler
import json
import os
import sqlite3
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.migrations import upgrade
from tests.support.postgres import database_name, postgres_available, scratch_database


# Migrating a new database costs about 0.2 s of CPU, and some 700 tests take one: each gets a
# copy of one migrated per test process instead.

@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("migrated-template") / "loa.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; the test command starts it")
    with scratch_database() as url:
        upgrade(url)
        yield database_name(url)


def _copy_sqlite(template: Path, path: Path) -> str:
    with closing(sqlite3.connect(template)) as source, closing(sqlite3.connect(path)) as copy:
        source.backup(copy)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, and PostgreSQL on the local server."""
    if request.param == "sqlite":
        yield _copy_sqlite(request.getfixturevalue("migrated_sqlite_template"), tmp_path / "loa.db")
    else:
        with scratch_database(template=request.getfixturevalue("migrated_postgres_template")) as url:
            yield url


@pytest.fixture
def sqlite_url(migrated_sqlite_template: Path, tmp_path) -> str:
    return _copy_sqlite(migrated_sqlite_template, tmp_path / "loa.db")


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


# -- running in parallel (pytest-xdist; scripts/test passes -n auto) -----------------------------
#
# Each worker collects the suite and orders it in work units, longest first: a group of tests
# that share a module- or package-scoped fixture of this project (a server, a database), which
# one worker runs in pytest's order so that the fixture is set up once, or a single test. The
# workers write the units to a file the controller names; the controller's scheduler
# (``LongestFirstScheduling``, taking the place of ``--dist load``) hands them out in that
# order. xdist's own grouping (``--dist loadgroup``) is not used: it renames node ids, which
# pytest 9.2 ignores, and like ``loadfile`` it runs only the first of tests that share a node
# id (schemathesis' tests do).

# A test still running after this long hangs (the slowest takes about 150 s): every thread of
# its process is printed, and an xdist worker then ends, so that the run goes on without it
# (the test fails as "crashed", a new worker takes the rest) and ends with its summary.
HANG_S = 300.0


_STDERR = pytest.StashKey[int]()  # the terminal's stderr, which the tests' output capture leaves alone


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    stderr = item.config.stash.get(_STDERR, None)
    if stderr is None:
        return (yield)
    faulthandler.dump_traceback_later(HANG_S, exit=hasattr(item.config, "workerinput"), file=stderr)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: most of the suite waits on servers and timers, not on the CPU,
    so four per core, at least 4 and at most 8 (beyond that the longest test alone sets the
    wall time). On 2 cores six workers kept the CPU busy only about three quarters of the run.
    LOA_TEST_WORKERS overrides it."""
    if os.environ.get("LOA_TEST_WORKERS"):
        return int(os.environ["LOA_TEST_WORKERS"])
    return min(8, max(4, 4 * (os.cpu_count() or 1)))


# Typical wall time in seconds of each test under a node id prefix (the longest matching prefix
# wins; any other test counts SHORT_TEST_S; a test marked ``slow`` SLOW_TEST_S), from
# ``--durations`` of a parallel run on a 2-core machine. Only the order of a parallel run
# depends on it.
EXPECTED_S = {
    "tests/simulators/test_demo.py::test_demo_shows_a_live_fleet": 75.0,
    "tests/conformance/test_lifecycle.py": 16.0,
    "tests/conformance/test_schedule.py": 9.0,
    "tests/conformance/test_reconnect.py": 6.0,
    "tests/conformance/test_updates.py": 10.0,  # the firmware's: MicroPython checks a signature
    "tests/conformance/": 2.0,
    "tests/broker/security/": 2.5,
    "tests/firmware/test_player.py": 5.0,
    "tests/firmware/test_receiver.py": 5.0,
    "tests/firmware/test_hostile_commands.py": 7.0,
    "tests/firmware/test_typecheck.py": 5.0,
    "tests/test_typecheck_service.py": 30.0,
    "tests/firmware/test_clock.py": 1.5,
    "tests/firmware/": 0.5,
    "tests/simulators/test_faults.py": 5.0,
    "tests/simulators/test_firmware_receivers.py": 5.0,
    "tests/simulators/test_cli.py": 3.0,
    "tests/simulators/": 1.0,
    "tests/fleet_service/worker/test_roles.py": 60.0,
    "tests/fleet_service/telemetry/test_writer.py": 10.0,
    "tests/fleet_service/mqtt/test_adapter.py": 10.0,
    "tests/fleet_service/ingest/test_hostile_payloads.py": 8.0,
    "tests/fleet_service/ingest/test_service_on_mosquitto.py": 4.0,
    "tests/fleet_service/outbox/test_broker_logins.py": 8.0,
    "tests/fleet_service/outbox/": 2.0,
    "tests/fleet_service/auth/test_rate_limit.py": 6.0,
    "tests/fleet_service/auth/test_cli.py": 6.0,
    "tests/fleet_service/auth/": 2.5,
    "tests/fleet_service/audit/test_cli.py": 5.0,
    "tests/fleet_service/audit/": 3.0,
    "tests/fleet_service/registry/test_cli.py": 3.0,
    "tests/fleet_service/commands/test_delivery.py": 1.5,
    "tests/fleet_service/rollouts/test_driver.py": 4.5,
    "tests/fleet_service/rollouts/test_cli.py": 2.0,
    "tests/fleet_service/alerts/test_no_sound_firmware.py": 25.0,
    "tests/fleet_service/alerts/test_worker.py": 12.0,
    "tests/fleet_service/alerts/test_notify.py": 2.5,
    "tests/fleet_service/alerts/test_cli.py": 1.0,
    "tests/fleet_service/schedules/test_schedules.py": 1.5,
    "tests/fleet_service/test_openapi.py": 50.0,  # half the OpenAPI fuzz each, in a pytest of its own
}
SHORT_TEST_S = 0.3
SLOW_TEST_S = 150.0
# A worker starts a test once it has been given the next one (xdist's runtest protocol needs
# it): behind a test expected to take this long, the next one is a short one.
LONG_TEST_S = 10.0
# Where the workers write their work units: a file in a directory the controller makes.
_UNITS_FILE = pytest.StashKey[Path]()


def _expected_s(item: pytest.Item) -> float:
    if item.get_closest_marker("slow"):
        return SLOW_TEST_S
    nodeid = item.nodeid
    best = max((prefix for prefix in EXPECTED_S if nodeid.startswith(prefix)), key=len, default=None)
    return EXPECTED_S[best] if best is not None else SHORT_TEST_S


def _shared_fixture_group(item: pytest.Item) -> str | None:
    """The group of tests that share a package- or module-scoped fixture of this project with
    ``item``, or None. A package-scoped fixture groups its package, a module-scoped one its
    module; a parametrized one, each of its parameters apart (pytest sets it up once for each)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    callspec = getattr(item, "callspec", None)
    shared: dict[str, list[str]] = {"package": [], "module": []}
    where = {"package": "", "module": item.nodeid.split("::", 1)[0]}
    for name in info.names_closure:
        for fixturedef in info.name2fixturedefs.get(name, ()):
            if not fixturedef.baseid or fixturedef.scope not in shared:  # plugins' fixtures: baseid ""
                continue
            if fixturedef.scope == "package":
                where["package"] = where["package"] or fixturedef.baseid.split("::", 1)[0]
            index = callspec.indices.get(name) if callspec is not None else None
            shared[fixturedef.scope].append(name if index is None else f"{name}={index}")
    for scope in ("package", "module"):
        if shared[scope]:
            return f"{where[scope]}:{','.join(sorted(set(shared[scope])))}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """In an xdist worker, after every other plugin (pytest's reordering by fixtures,
    deselection): the work units, longest first (a group counts the sum of its tests), each
    group in pytest's order; written for the controller's scheduler. Every worker computes the
    same order, as xdist requires. Without xdist, pytest's order is kept."""
    result = yield
    units_file = getattr(config, "workerinput", {}).get("loa_units_file")
    if units_file is None:
        return result
    unit_of: dict[int, str] = {}
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        unit = _shared_fixture_group(item) or f"{i}:{item.nodeid}"  # node ids need not be unique
        unit_of[id(item)] = unit
        cost[unit] = cost.get(unit, 0.0) + _expected_s(item)
        first.setdefault(unit, i)
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-cost[unit_of[id(item)]], first[unit_of[id(item)]], position[id(item)]))
    units: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        units.setdefault(unit_of[id(item)], []).append(i)
    plan = {"nodeids": [item.nodeid for item in items], "units": list(units.values()),
            "expected_s": [_expected_s(item) for item in items]}
    partial = Path(f"{units_file}.{os.getpid()}")
    partial.write_text(json.dumps(plan))
    partial.replace(units_file)  # every worker writes the same plan; the controller reads one
    return result


def pytest_configure(config: pytest.Config) -> None:
    """Where a hanging test's threads are printed (pytest captures fd 2 while tests run, but
    not now); in the controller of a parallel run (``-n N``, xdist's default ``--dist load``),
    the file through which the workers give their work units to ``LongestFirstScheduling``."""
    try:
        config.stash[_STDERR] = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no real stderr: no traceback, no end either
        pass
    if hasattr(config, "workerinput") or config.getoption("dist", "no") != "load":
        return
    directory = tempfile.mkdtemp(prefix="loa-xdist-")
    config.stash[_UNITS_FILE] = Path(directory) / "units.json"


def pytest_unconfigure(config: pytest.Config) -> None:
    stderr = config.stash.get(_STDERR, None)
    if stderr is not None:
        os.close(stderr)
        del config.stash[_STDERR]
    units_file = config.stash.get(_UNITS_FILE, None)
    if units_file is not None:
        units_file.unlink(missing_ok=True)
        units_file.parent.rmdir()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error under -p no:xdist
def pytest_configure_node(node: Any) -> None:
    units_file = node.config.stash.get(_UNITS_FILE, None)
    if units_file is not None:
        node.workerinput["loa_units_file"] = str(units_file)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: no error under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    units_file = config.stash.get(_UNITS_FILE, None)
    return None if units_file is None else _longest_first_scheduling()(config, log, units_file)


def _longest_first_scheduling() -> type:
    from xdist.scheduler import LoadScheduling

    class LongestFirstScheduling(LoadScheduling):
        """``--dist load`` by the workers' work units, in their order: a node that has fewer
        than two tests queued (it runs a test once it has the next) is given the next unit, or,
        behind a test expected to take LONG_TEST_S or more, the last (shortest) one, so that no
        long unit waits behind a long test."""

        def __init__(self, config: pytest.Config, log: Any, units_file: Path) -> None:
            super().__init__(config, log)
            self.units_file = units_file
            self.units: deque[list[int]] = deque()
            self.expected_s: list[float] = []

        def schedule(self) -> None:
            assert self.collection_is_completed
            if self.collection is not None:
                for node in self.nodes:
                    self.check_schedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = next(iter(self.node2collection.values()))
            if not self.collection:
                return
            self.units, self.expected_s = self._plan(self.collection)
            self.pending[:] = [i for unit in self.units for i in unit]
            for node in self.nodes:
                self.check_schedule(node)

        def _plan(self, collection: list[str]) -> tuple[deque[list[int]], list[float]]:
            try:
                plan = json.loads(self.units_file.read_text())
            except (OSError, ValueError):
                plan = {}
            if plan.get("nodeids") != collection:  # not written as expected: one test at a time
                self.log("no work units from the workers; scheduling one test at a time")
                return deque([i] for i in range(len(collection))), [SHORT_TEST_S] * len(collection)
            return deque(plan["units"]), plan["expected_s"]

        def check_schedule(self, node: Any, duration: float = 0, **kwargs: Any) -> None:
            if node.shutting_down:
                return
            queued = self.node2pending[node]
            while len(queued) < 2 and self.units:
                behind_long = len(queued) == 1 and self.expected_s[queued[0]] >= LONG_TEST_S
                self._send_unit(node, self.units.pop() if behind_long else self.units.popleft())
            if not self.units:
                node.shutdown()

        def _send_unit(self, node: Any, unit: list[int]) -> None:
            sent = set(unit)
            self.pending[:] = [i for i in self.pending if i not in sent]
            self.node2pending[node].extend(unit)
            node.send_runtest_some(unit)

        def mark_test_pending(self, item: str) -> None:
            assert self.collection is not None
            index = self.collection.index(item)
            self.units.appendleft([index])
            self.pending.insert(0, index)
            for node in self.nodes:
                self.check_schedule(node)

        def remove_node(self, node: Any) -> str | None:
            """A node that crashed: what it had queued goes back to the front of the queue."""
            queued = self.node2pending.pop(node)
            if not queued:
                return None
            assert self.collection is not None
            crashed = self.collection[queued.pop(0)]
            if queued:
                self.units.appendleft(queued)
                self.pending[:0] = queued
            for other in self.nodes:
                self.check_schedule(other)
            return crashed

    return LongestFirstScheduling
