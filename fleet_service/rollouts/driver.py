"""Driving running rollouts: the leading worker's workflow (docs/firmware-updates.md, "Rollouts").

Every second, and at once when a receiver is born, each running rollout is checked in a worker
thread: a withdrawn release stops it, receivers stuck in one step too long fail ("timeout"),
the current wave is judged against the thresholds (the next wave starts, or the rollout pauses
by itself, or completes), and receivers of the waves reached that are online now are offered
the release, inside the maintenance window and at the rollout's pace: one ``update`` command per
receiver, recorded with the receiver's place in the rollout in one transaction, then handed to
command delivery. What the receivers report (their update status, and their answer to the
command) is queued in the event loop and written in batches.

Everything is in the database (rollouts, rollout_targets): a restart, or another worker taking
the lead, continues where this one stopped. A receiver is offered once per attempt: its target
moves from pending to offered by a conditional update, so that even two workers that both
believe they lead cannot offer it twice; a command recorded but not yet published is
delivered by the next leader (delivery loads the open commands, and the outbox holds its entry),
and a receiver answers a repeated command id with ``dup``."""

from __future__ import annotations

import asyncio
import logging
import time as monotonic_time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.auth.models import Role
from fleet_service.commands import service as commands
from fleet_service.commands.models import TargetKind
from fleet_service.commands.service import Created
from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.firmware.models import FirmwareRelease
from fleet_service.protocol.messages import Ack, AckStatus, CommandOp, Priority, UpdateStatus
from fleet_service.registry.models import Receiver, ReceiverStatus
from fleet_service.rollouts.models import FINAL_TARGET_STATES, Rollout, RolloutState, RolloutTarget, TargetState
from fleet_service.rollouts.plan import Pace, Thresholds, Verdict, WaveTally, Window, judge
from fleet_service.rollouts.service import firmware_names, withdraw_release
from fleet_service.uptime.models import ReceiverLiveState

log = logging.getLogger(__name__)

# How often running rollouts are checked when nothing wakes the driver.
TICK_S = 1.0
# A storm of births wakes the driver many times: checks are at least this far apart.
MIN_TICK_GAP_S = 0.25
# Receivers' reports are gathered this long and written in one transaction.
REPORT_WRITE_S = 0.5
RETRY_MAX_S = 30.0
# Offers not made for want of receivers (the window closed, the rest offline) do not pile up
# as a right to a burst later: the pace counts afresh once it has been idle this long.
PACE_IDLE_RESET_S = 10.0
# Births remembered between two checks (the live state may not have them yet); beyond this
# many, a storm: the live state has them within a second anyway.
BORN_KEPT = 500
# Targets read per query when reports are matched to them.
CHUNK = 500

# The steps a receiver may stay in at most step_timeout_s before it counts as failed. Pending
# waits for its wave or its birth; deferred waits for a broadcast to end (it installs by itself).
TIMED_STEPS = (TargetState.OFFERED.value, TargetState.DOWNLOADING.value, TargetState.DOWNLOADED.value,
               TargetState.VERIFIED.value, TargetState.INSTALLING.value, TargetState.REBOOTING.value)
_FINAL = frozenset(s.value for s in FINAL_TARGET_STATES)
_LIVE = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)
# Answers to the update command that end it (the receiver's refusals and failures).
_ACK_FINAL = {AckStatus.DONE, AckStatus.FAILED, AckStatus.REJECTED, AckStatus.EXPIRED}


def firmware_base_url(settings: Settings) -> str:
    """Where receivers fetch releases: LOA_FIRMWARE_BASE_URL, else the download listener's
    address (LOA_DOWNLOAD_PORT), else the API's own."""
    if settings.firmware_base_url:
        return settings.firmware_base_url.rstrip("/")
    host, port = settings.api_host, settings.api_port
    if settings.download_port:  # 0, a free port, is known only to the process that took it
        host, port = settings.download_host or host, settings.download_port
    host = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def download_url(base: str, release_id: int) -> str:
    return f"{base}/api/v1/firmware/download/{release_id}"


@dataclass(frozen=True, slots=True)
class Report:
    """What a receiver said about one update command: its status, or its final answer."""

    receiver_id: str
    command_id: str
    state: TargetState
    at: datetime
    release_id: int | None = None  # from a status (an answer does not name the release)
    percent: int | None = None
    reason: str | None = None
    fetched: int | None = None


def report_of_status(receiver_id: str, status: UpdateStatus, at: datetime) -> Report:
    return Report(receiver_id, status.command_id, TargetState(status.state.value), at, status.release_id,
                  status.percent, status.reason, status.fetched)


def report_of_ack(receiver_id: str, ack: Ack, at: datetime) -> Report | None:
    """The answer that ends an update command, as a target state; None for ``accepted``."""
    if ack.status not in _ACK_FINAL:
        return None
    if ack.status is AckStatus.DONE:
        return Report(receiver_id, ack.command_id, TargetState.CONFIRMED, at)
    if ack.status is AckStatus.FAILED and ack.reason == "rolled_back":
        return Report(receiver_id, ack.command_id, TargetState.ROLLED_BACK, at, reason=ack.reason)
    return Report(receiver_id, ack.command_id, TargetState.FAILED, at, reason=ack.reason or ack.status.value)


def apply_report(target: RolloutTarget, report: Report, by_command: bool) -> bool:
    """Move ``target`` as ``report`` says, unless the report is older news; True if it moved.

    - A final state stays, except a timeout (the worker's guess) that the receiver's own final
      word replaces.
    - A pending target (retried, waiting for its new offer) takes only ``confirmed`` from an
      earlier command: the receiver runs the release after all.
    - A report matched by the release rather than the command (an offer of another rollout)
      is taken only as ``confirmed``, by a target not offered yet.
    """
    current = TargetState(target.state)
    new = report.state
    if current.final:
        if not (current is TargetState.FAILED and target.reason == "timeout" and new.final):
            return False
    elif current is TargetState.PENDING or not by_command:
        if new is not TargetState.CONFIRMED:
            return False
    changed = current is not new or (new is TargetState.DOWNLOADING and report.percent != target.percent)
    if report.fetched is not None:
        detail = dict(target.detail or {})
        if detail.get("got") != report.fetched:
            detail["got"] = report.fetched
            target.detail = detail
    if not changed:
        return False
    target.state = new.value
    target.state_at = report.at
    if new is TargetState.DOWNLOADING:
        target.percent = report.percent
    elif new in (TargetState.DOWNLOADED, TargetState.VERIFIED, TargetState.INSTALLING, TargetState.REBOOTING,
                 TargetState.CONFIRMED, TargetState.DEFERRED):
        target.percent = 100
    target.reason = report.reason[:200] if report.reason and new in (
        TargetState.FAILED, TargetState.ROLLED_BACK, TargetState.DEFERRED) else None
    return True


class RolloutDriver:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *,
                 submit: Callable[[Created], None]) -> None:
        self._sessions = sessions
        self._base_url = firmware_base_url(settings)
        self._submit = submit
        self._wake = asyncio.Event()
        self._reports: list[Report] = []
        self._reports_ready = asyncio.Event()
        self._born: set[str] = set()
        # Update commands whose answer still matters (their target is not final, or timed out).
        self._update_commands: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.offered = 0        # offers made by this process
        self.reports = 0        # reports written
        self.failures = 0       # checks or writes that failed and were retried

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._update_commands = await asyncio.to_thread(self._load_commands)
        self._tasks = [asyncio.create_task(self._run(), name="rollout-driver"),
                       asyncio.create_task(self._writer(), name="rollout-reports")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reports:  # what the receivers said last is not lost at a clean stop
            batch, self._reports = self._reports, []
            try:
                await asyncio.to_thread(self._write_reports, batch)
            except Exception:
                log.exception("stopping with %d update reports unwritten", len(batch))

    def _load_commands(self) -> set[str]:
        with session_scope(self._sessions) as session:
            return {cid for cid in session.scalars(select(RolloutTarget.command_id).where(
                RolloutTarget.command_id.is_not(None),
                or_(RolloutTarget.state.not_in(list(_FINAL)),
                    and_(RolloutTarget.state == TargetState.FAILED.value, RolloutTarget.reason == "timeout"))))
                    if cid is not None}

    # --- what ingest hears (event loop) -------------------------------------------------------

    def on_birth(self, receiver_id: str) -> None:
        if len(self._born) < BORN_KEPT:
            self._born.add(receiver_id)
        self._wake.set()

    def on_status(self, receiver_id: str, status: UpdateStatus, at: datetime) -> None:
        self._queue(report_of_status(receiver_id, status, at))

    def on_ack(self, receiver_id: str, ack: Ack, at: datetime) -> None:
        if ack.command_id not in self._update_commands:
            return  # not an update command (or one whose outcome is already recorded)
        report = report_of_ack(receiver_id, ack, at)
        if report is not None:
            self._queue(report)

    def _queue(self, report: Report) -> None:
        self._reports.append(report)
        self._reports_ready.set()

    def wake(self) -> None:
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every report so far is written (tests)."""
        while self._reports or self._reports_ready.is_set():
            await asyncio.sleep(0.02)

    # --- the loops ----------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 1.0
        last = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_S)
            except TimeoutError:
                pass
            gap = MIN_TICK_GAP_S - (monotonic_time.monotonic() - last)
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()
            born, self._born = self._born, set()
            last = monotonic_time.monotonic()
            try:
                created = await asyncio.to_thread(self.check, born)
            except Exception as exc:
                self.failures += 1
                log.error("checking the running rollouts failed (%s: %s); retrying in %.0f s",
                          exc.__class__.__name__, exc, delay)
                self._born |= born
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 1.0
            for made in created:
                self._update_commands.add(made.command.id)
                self._submit(made)

    async def _writer(self) -> None:
        delay = 1.0
        while True:
            await self._reports_ready.wait()
            await asyncio.sleep(REPORT_WRITE_S)
            batch, self._reports = self._reports, []
            try:
                done = await asyncio.to_thread(self._write_reports, batch)
            except Exception as exc:
                self.failures += 1
                log.error("writing %d update reports failed (%s); retrying in %.0f s",
                          len(batch), exc.__class__.__name__, delay)
                self._reports = batch + self._reports  # in order: a final state is never lost
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 1.0
            self.reports += len(batch)
            self._update_commands -= done
            if not self._reports:
                self._reports_ready.clear()
            if done:
                self._wake.set()  # a wave may have finished

    # --- reports (worker thread) --------------------------------------------------------------

    def _write_reports(self, batch: list[Report]) -> set[str]:
        """Apply the reports in the order they came; the command ids now finished with."""
        finished: set[str] = set()
        receivers = sorted({r.receiver_id for r in batch})
        with session_scope(self._sessions) as session:
            targets: dict[str, list[tuple[RolloutTarget, int, str]]] = {}
            for start in range(0, len(receivers), CHUNK):
                rows = session.execute(
                    select(RolloutTarget, Rollout.release_id, Rollout.state)
                    .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
                    .where(RolloutTarget.receiver_id.in_(receivers[start:start + CHUNK])))
                for target, release_id, rollout_state in rows:
                    targets.setdefault(target.receiver_id, []).append((target, release_id, rollout_state))
            for report in batch:
                mine = targets.get(report.receiver_id, [])
                exact = [t for t, _, _ in mine if t.command_id == report.command_id]
                if exact:
                    for target in exact:
                        apply_report(target, report, by_command=True)
                        if TargetState(target.state).final and target.reason != "timeout":
                            finished.add(report.command_id)
                elif report.release_id is not None:
                    for target, release_id, rollout_state in mine:
                        if release_id == report.release_id and rollout_state in _LIVE and target.command_id is None:
                            apply_report(target, report, by_command=False)
        return finished

    # --- the check (worker thread) ------------------------------------------------------------

    def check(self, born: Iterable[str] = (), now: datetime | None = None) -> list[Created]:
        """One turn over the running and paused rollouts; the update commands recorded."""
        created: list[Created] = []
        with session_scope(self._sessions) as session:
            ids = list(session.scalars(select(Rollout.id).where(Rollout.state.in_(_LIVE)).order_by(Rollout.id)))
        born = sorted(born)
        for rollout_id in ids:
            try:
                with session_scope(self._sessions) as session:
                    created += self._check_one(session, rollout_id, born, now or utcnow())
            except Exception:  # one rollout's trouble holds back none of the others
                self.failures += 1
                log.exception("checking rollout %d failed; checked again at the next turn", rollout_id)
        return created

    def _check_one(self, session: Session, rollout_id: int, born: list[str], now: datetime) -> list[Created]:
        rollout = session.get(Rollout, rollout_id)
        if rollout is None or rollout.state not in _LIVE:
            return []
        release = session.get(FirmwareRelease, rollout.release_id)
        assert release is not None
        if release.withdrawn_at is not None:
            stopped = withdraw_release(session, release.id, now)
            log.info("rollouts %s stopped: release %s was withdrawn", stopped, release.version)
            return []
        self._time_out(session, rollout, release, now)
        self._drop_removed(session, rollout, now)
        if rollout.state != RolloutState.RUNNING.value:
            return []
        if not self._judge(session, rollout, now):
            return []
        return self._offer(session, rollout, release, born, now)

    def _time_out(self, session: Session, rollout: Rollout, release: FirmwareRelease, now: datetime) -> None:
        stuck = (RolloutTarget.rollout_id == rollout.id, RolloutTarget.state.in_(TIMED_STEPS),
                 RolloutTarget.state_at < now - timedelta(seconds=rollout.step_timeout_s))
        # Read first: a write every second that changes nothing would still take SQLite's lock.
        if session.scalar(select(RolloutTarget.receiver_id).where(*stuck).limit(1)) is None:
            return
        # A receiver whose confirmation was lost (its retained status gone with a broker that
        # kept nothing) but that has been heard running the release since: its trial would
        # have ended long before the step's time-out, so it runs the release for good.
        running_it = session.scalars(
            select(RolloutTarget.receiver_id)
            .join(ReceiverLiveState, ReceiverLiveState.receiver_id == RolloutTarget.receiver_id)
            .where(*stuck, ReceiverLiveState.firmware.in_(firmware_names(release.version)),
                   ReceiverLiveState.heard_at > RolloutTarget.state_at)).all()
        if running_it:
            session.execute(
                update(RolloutTarget)
                .where(RolloutTarget.rollout_id == rollout.id, RolloutTarget.receiver_id.in_(running_it))
                .values(state=TargetState.CONFIRMED.value, percent=100, reason="seen_running", state_at=now)
                .execution_options(synchronize_session=False))
            log.info("rollout %d: %d receivers seen running %s without their confirmation: confirmed",
                     rollout.id, len(running_it), release.version)
        timed_out = session.execute(
            update(RolloutTarget).where(*stuck)
            .values(state=TargetState.FAILED.value, reason="timeout", state_at=now)
            .execution_options(synchronize_session=False))
        if timed_out.rowcount:  # type: ignore[attr-defined]
            log.info("rollout %d: %d receivers timed out", rollout.id, timed_out.rowcount)  # type: ignore[attr-defined]

    def _drop_removed(self, session: Session, rollout: Rollout, now: datetime) -> None:
        """A receiver revoked or retired before it was offered will never be: cancelled, so that
        the rollout can finish."""
        gone = (RolloutTarget.rollout_id == rollout.id, RolloutTarget.state == TargetState.PENDING.value,
                RolloutTarget.receiver_id.in_(select(Receiver.id).where(Receiver.status != ReceiverStatus.ACTIVE.value)))
        if session.scalar(select(RolloutTarget.receiver_id).where(*gone).limit(1)) is None:
            return
        session.execute(update(RolloutTarget).where(*gone)
                        .values(state=TargetState.CANCELLED.value, reason="receiver_removed", state_at=now)
                        .execution_options(synchronize_session=False))

    def _judge(self, session: Session, rollout: Rollout, now: datetime) -> bool:
        """Apply the thresholds to the current wave; whether the rollout still runs."""
        counts: dict[str, int] = dict(session.execute(  # type: ignore[arg-type]
            select(RolloutTarget.state, func.count())
            .where(RolloutTarget.rollout_id == rollout.id, RolloutTarget.wave == rollout.current_wave)
            .group_by(RolloutTarget.state)).all())
        excluded = counts.get(TargetState.SKIPPED.value, 0) + counts.get(TargetState.CANCELLED.value, 0)
        size = sum(counts.values()) - excluded
        confirmed = counts.get(TargetState.CONFIRMED.value, 0)
        failed = counts.get(TargetState.FAILED.value, 0) + counts.get(TargetState.ROLLED_BACK.value, 0)
        tally = WaveTally(size, confirmed, failed)
        thresholds = Thresholds(rollout.success_percent, rollout.error_percent, rollout.min_finished)
        verdict = judge(tally, thresholds)
        wave = rollout.current_wave + 1  # for people, the first wave is 1
        if verdict is Verdict.PAUSE:
            self._set_state(session, rollout, RolloutState.PAUSED, now,
                            f"đợt {wave}: {failed}/{tally.finished} máy đã xong bị lỗi (ngưỡng {rollout.error_percent} %), "
                            f"{confirmed}/{size} xác nhận / wave {wave}: {failed} of {tally.finished} finished "
                            f"receivers failed (threshold {rollout.error_percent} %), {confirmed} of {size} confirmed")
            return False
        if verdict is Verdict.NEXT_WAVE:
            if rollout.current_wave + 1 < rollout.wave_count:
                moved = session.execute(
                    update(Rollout).where(Rollout.id == rollout.id, Rollout.current_wave == rollout.current_wave,
                                          Rollout.state == RolloutState.RUNNING.value)
                    .values(current_wave=rollout.current_wave + 1, updated_at=now)
                    .execution_options(synchronize_session=False))
                session.refresh(rollout)
                if moved.rowcount:  # type: ignore[attr-defined]
                    log.info("rollout %d: wave %d reached its threshold (%d/%d confirmed); wave %d starts",
                             rollout.id, wave, confirmed, size, wave + 1)
                return True
        open_in_wave = sum(n for state, n in counts.items() if state not in _FINAL)
        open_anywhere = session.scalar(select(func.count()).select_from(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout.id, RolloutTarget.state.not_in(list(_FINAL))))
        if verdict is Verdict.NEXT_WAVE and not open_anywhere:
            self._set_state(session, rollout, RolloutState.COMPLETED, now, None)
            log.info("rollout %d completed", rollout.id)
            return False
        if verdict is Verdict.CONTINUE and not open_in_wave:
            self._set_state(session, rollout, RolloutState.PAUSED, now,
                            f"đợt {wave} đã xong nhưng chỉ {confirmed}/{size} máy xác nhận (cần {rollout.success_percent} %): "
                            f"cập nhật lại máy lỗi hoặc huỷ / wave {wave} finished with only {confirmed} of {size} "
                            f"confirmed (needs {rollout.success_percent} %): retry the failed or abort")
            return False
        return True

    @staticmethod
    def _set_state(session: Session, rollout: Rollout, state: RolloutState, now: datetime, reason: str | None) -> None:
        values: dict[str, Any] = {"state": state.value, "state_reason": reason[:500] if reason else None,
                                  "updated_at": now}
        if state.final:
            values["finished_at"] = now
        session.execute(update(Rollout).where(Rollout.id == rollout.id, Rollout.state == RolloutState.RUNNING.value)
                        .values(**values).execution_options(synchronize_session=False))
        session.refresh(rollout)

    def _offer(self, session: Session, rollout: Rollout, release: FirmwareRelease, born: list[str],
               now: datetime) -> list[Created]:
        pace = Pace(rollout.per_minute, rollout.jitter_s)
        paced_from = rollout.paced_from or rollout.created_at
        allowed = pace.allowed(paced_from, now, rollout.offered_since_paced)
        window = (Window.parse(rollout.window_start, rollout.window_end, rollout.window_days or 127)
                  if rollout.window_start and rollout.window_end else None)
        chosen: list[str] = []
        if allowed > 0 and (window is None or window.contains(now)):
            online = ReceiverLiveState.online.is_(True)
            if born:
                online = or_(online, RolloutTarget.receiver_id.in_(born))
            chosen = list(session.scalars(
                select(RolloutTarget.receiver_id)
                .outerjoin(ReceiverLiveState, ReceiverLiveState.receiver_id == RolloutTarget.receiver_id)
                .where(RolloutTarget.rollout_id == rollout.id, RolloutTarget.state == TargetState.PENDING.value,
                       RolloutTarget.wave <= rollout.current_wave, online)
                .order_by(RolloutTarget.wave, RolloutTarget.receiver_id).limit(allowed)))
        created: list[Created] = []
        issuer = commands.Issuer(rollout.created_by, rollout.creator_name, Role.ADMIN, None)
        params = {"rel": release.id, "ver": release.version, "hw": release.hardware,
                  "url": download_url(self._base_url, release.id), "jit": rollout.jitter_s, "down": rollout.force}
        for rid in chosen:
            # Pending to offered only if still pending: never two offers of one attempt.
            taken = session.execute(
                update(RolloutTarget)
                .where(RolloutTarget.rollout_id == rollout.id, RolloutTarget.receiver_id == rid,
                       RolloutTarget.state == TargetState.PENDING.value)
                .values(state=TargetState.OFFERED.value, state_at=now, offered_at=now, percent=None, reason=None,
                        attempts=RolloutTarget.attempts + 1)
                .execution_options(synchronize_session=False))
            if not taken.rowcount:  # type: ignore[attr-defined]
                continue
            made = commands.create_system_command(
                session, CommandOp.UPDATE, Priority.NORMAL, params, TargetKind.RECEIVER, rid, rid, [rid], issuer,
                expires_in_s=rollout.step_timeout_s, note=f"rollout {rollout.id}: {rollout.name}"[:200], now=now)
            session.execute(update(RolloutTarget)
                            .where(RolloutTarget.rollout_id == rollout.id, RolloutTarget.receiver_id == rid)
                            .values(command_id=made.command.id).execution_options(synchronize_session=False))
            created.append(made)
        offered = rollout.offered_since_paced + len(created)
        if len(created) < allowed and (now - paced_from).total_seconds() > PACE_IDLE_RESET_S:
            rollout.paced_from, rollout.offered_since_paced = now, len(created)
        elif created:
            rollout.offered_since_paced = offered
        if created:
            rollout.updated_at = now
            self.offered += len(created)
            log.info("rollout %d: offered release %s to %d receivers", rollout.id, release.version, len(created))
        return created
