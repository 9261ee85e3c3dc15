"""``loa rollouts`` from a terminal against a running API (uvicorn): create, list, show (with
each receiver, and --watch), pause, resume, retry, abort; an operator's refusal ends the
command with the service's bilingual message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.cli import app as loa
from fleet_service.config import Settings
from fleet_service.rollouts.cli import wave_line
from fleet_service.rollouts.models import RolloutTarget
from fleet_service.runtime import Runtime
from tests.fleet_service.firmware.test_cli import ServedApi
from tests.fleet_service.rollouts.test_service import add_release
from tests.support.fleet import provision_fleet


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(loa, list(args))
    return result.exit_code, result.output


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[str, Runtime, int, dict[str, str]]]:
    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=4, stations=2)
    with runtime.sessions.begin() as session:
        release_id = add_release(session)
        tokens = {}
        for name, role in (("kythuat", Role.TECHNICIAN), ("vanhanh", Role.OPERATOR)):
            user = auth.create_user(session, name, role=role, region_id=fleet.region_id)
            tokens[name] = auth.issue_token(session, user.id, "cli")[1]
    try:
        with ServedApi(runtime) as url:
            yield url, runtime, release_id, tokens
    finally:
        runtime.close()


def test_create_follow_and_steer_a_rollout(served) -> None:
    url, runtime, release_id, tokens = served
    api = ("--api", url, "--token", tokens["kythuat"])
    code, output = run("rollouts", "create", "--release", str(release_id), "--waves", "1,100%",
                       "--window", "22:00-04:00", "--per-minute", "10", "--api", url, "--token", tokens["vanhanh"])
    assert code == 1 and "không được làm việc này" in output and "may not do this" in output
    code, output = run("rollouts", "create", "--release", str(release_id), "--name", "1.4.0 Hùng Sơn",
                       "--waves", "1,100%", "--window", "22:00-04:00", "--per-minute", "10", *api)
    assert code == 0, output
    assert 'rollout 1 "1.4.0 Hùng Sơn": 1.4.0 (esp32-a7670) — đang chạy / running' in output
    assert "22:00–04:00" in output and "10 máy/phút" in output
    assert "▶ đợt / wave  1 [░░░░░░░░░░░░░░░░░░░░░░░░] 0/1 xác nhận / confirmed" in output
    assert "đợt / wave  2" in output and "0/3 xác nhận" in output
    code, output = run("rollouts", "list", *api)
    assert code == 0 and "1.4.0 Hùng Sơn" in output and "running" in output and "1/2" in output
    with runtime.sessions.begin() as session:  # as the worker would record them
        session.get(RolloutTarget, (1, "rx-0")).state = "confirmed"
        failed = session.get(RolloutTarget, (1, "rx-1"))
        failed.state, failed.reason, failed.wave = "failed", "hash", 0
    code, output = run("rollouts", "show", "1", "--targets", *api)
    assert code == 0, output
    assert "1/2 xác nhận / confirmed, 1 lỗi / failed" in output
    assert "[████████████✗✗✗✗✗✗✗✗✗✗✗✗]" in output
    assert "rx-1" in output and "lỗi / failed" in output and "hash" in output
    code, output = run("rollouts", "pause", "1", "--reason", "kiểm tra loa", *api)
    assert code == 0 and "paused rollout 1: kiểm tra loa" in output
    code, output = run("rollouts", "pause", "1", *api)
    assert code == 1 and "cannot pause a rollout that is paused" in output
    code, output = run("rollouts", "retry", "1", *api)
    assert code == 0 and output.startswith("1 máy sẽ được gửi lại")
    code, output = run("rollouts", "resume", "1", *api)
    assert code == 0 and "resumed rollout 1" in output
    code, output = run("rollouts", "abort", "1", "--reason", "đổi bản khác", *api)
    assert code == 0 and "aborted rollout 1: đổi bản khác" in output and "3 máy chưa gửi" in output
    code, output = run("rollouts", "show", "1", "--watch", *api)  # it has ended: one drawing
    assert code == 0 and "đã huỷ / aborted" in output and "lý do / reason: đổi bản khác" in output
    assert output.count("Đợt cập nhật / rollout 1") == 1
    code, output = run("rollouts", "show", "9", *api)
    assert code == 1 and "no rollout 9" in output
    code, output = run("rollouts", "create", "--release", str(release_id), "--window", "22:00-04:00",
                       "--days", "sat,Mon", *api)
    assert code == 0 and "khung giờ / window: 22:00–04:00 (mon, sat)" in output, output
    code, output = run("rollouts", "create", "--release", str(release_id), "--window", "22:00-04:00",
                       "--days", "mon,thurs", *api)
    assert code == 2 and "days of the week" in output
    code, output = run("rollouts", "create", "--release", str(release_id), "--days", "mon", *api)
    assert code == 2 and "--days needs --window" in output


def test_a_wave_line_counts_what_is_under_way() -> None:
    line = wave_line({"wave": 2, "size": 8, "counts": {"confirmed": 2, "downloading": 2, "deferred": 1,
                                                       "rolled_back": 1, "pending": 2}}, current=2)
    assert line.startswith("▶ đợt / wave  3 [██████✗✗✗▒▒▒▒▒▒▒▒▒░░░░░░]")
    assert "2/8 xác nhận / confirmed, 1 lỗi / failed, 3 đang cập nhật / updating, 2 chờ / pending" in line
