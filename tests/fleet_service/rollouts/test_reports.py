"""What the receivers report, written to their targets (SQLite and PostgreSQL): in order, the
newest offer kept against an older command's retained status, a final state kept, a timeout
replaced by the receiver's own final word, bytes fetched kept, the answers to the command."""

from __future__ import annotations

from sqlalchemy import select

from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.protocol.messages import Ack, AckStatus, UpdateState, UpdateStatus
from fleet_service.rollouts import service
from fleet_service.rollouts.driver import RolloutDriver, firmware_base_url, report_of_ack, report_of_status
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate
from tests.fleet_service.rollouts.test_service import ADMIN, add_release
from tests.support.fleet import provision_fleet


def status(cid: str, state: str, release_id: int, **extra) -> UpdateStatus:  # type: ignore[no-untyped-def]
    return UpdateStatus(session=1, sent_at=0, command_id=cid, release_id=release_id, release_version="1.4.0",
                        state=UpdateState(state), **extra)


def test_reports_move_targets_and_older_news_is_ignored(session_factory):
    provision_fleet(session_factory, receivers=4, stations=1)
    with session_scope(session_factory) as session:
        release_id = add_release(session)
        rollout_id = service.create_rollout(session, RolloutCreate(name="a", release_id=release_id), ADMIN).id
        rows = {t.receiver_id: t for t in session.scalars(select(RolloutTarget))}
        for rid, state, cid, reason in (("rx-0", "offered", "new0", None), ("rx-1", "failed", "old1", "timeout"),
                                        ("rx-2", "pending", "old2", None), ("rx-3", "pending", None, None)):
            rows[rid].state, rows[rid].command_id, rows[rid].reason = state, cid, reason
    driver = RolloutDriver(session_factory, Settings(environment="test"), submit=lambda _made: None)
    at = utcnow()
    reports = [
        report_of_status("rx-0", status("old0", "failed", release_id, reason="hash"), at),  # an older command's
        report_of_status("rx-0", status("new0", "downloading", release_id, percent=30, fetched=1200), at),
        report_of_status("rx-0", status("new0", "downloading", release_id, percent=60, fetched=2400), at),
        report_of_status("rx-1", status("old1", "confirmed", release_id, fetched=9000), at),  # timed out, then not
        report_of_status("rx-2", status("old2", "failed", release_id, reason="download"), at),  # retried since
        report_of_status("rx-3", status("other", "downloading", release_id, percent=10), at),
        report_of_status("rx-3", status("other", "confirmed", release_id), at),  # another rollout's offer
    ]
    assert driver._write_reports(reports) == {"old1"}
    # Acknowledgements: done confirms; a refusal fails with its reason; a final state stays.
    acks = [report_of_ack("rx-0", Ack(session=1, command_id="new0", status=AckStatus.REJECTED,
                                      reason="update_busy", sent_at=0), at),
            report_of_ack("rx-0", Ack(session=1, command_id="new0", status=AckStatus.DONE, sent_at=0), at)]
    assert report_of_ack("rx-0", Ack(session=1, command_id="new0", status=AckStatus.ACCEPTED, sent_at=0), at) is None
    assert report_of_ack("rx-0", Ack(session=1, command_id="x", status=AckStatus.FAILED, reason="rolled_back",
                                     sent_at=0), at).state is TargetState.ROLLED_BACK  # type: ignore[union-attr]
    with session_scope(session_factory) as session:
        target = session.get(RolloutTarget, (rollout_id, "rx-0"))
        assert (target.state, target.percent, target.detail) == ("downloading", 60, {"got": 2400})
    driver._write_reports([a for a in acks if a is not None])
    with session_scope(session_factory) as session:
        got = {t.receiver_id: (t.state, t.reason) for t in session.scalars(select(RolloutTarget))}
        assert got == {"rx-0": ("failed", "update_busy"), "rx-1": ("confirmed", None), "rx-2": ("pending", None),
                       "rx-3": ("confirmed", None)}
        assert session.get(RolloutTarget, (rollout_id, "rx-1")).detail == {"got": 9000}


def test_the_download_address_defaults_to_the_api():
    assert firmware_base_url(Settings(environment="test", api_host="0.0.0.0", api_port=8080)) == "http://127.0.0.1:8080"
    assert firmware_base_url(Settings(environment="test", firmware_base_url="https://loa.example/")) == \
        "https://loa.example"
