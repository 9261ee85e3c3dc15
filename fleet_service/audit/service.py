"""What goes into the audit log, and reading it back. An entry is written in its own
transaction, after the action's own has ended: a refused action rolls its changes back, but
its entry stays. Request bodies and the values of secret arguments are never recorded."""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.audit import repository as repo
from fleet_service.audit.models import AuditEntry, Outcome, Source
from fleet_service.db import session_scope, utcnow
from fleet_service.errors import LoaError
from fleet_service.scope import ScopeLike

log = logging.getLogger(__name__)

# HTTP methods that change something: only these are recorded.
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# `loa` commands that only read; every other command run on the database is recorded.
_READ_ONLY_COMMANDS = frozenset({"list", "show", "history", "status"})
_READ_ONLY_GROUPS = frozenset({"availability"})

# Arguments whose value is a secret: recorded as "***".
_SECRET_ARGUMENT = re.compile(r"(^|_)(password|passwd|secret|token)$")
REDACTED = "***"

# Column widths (models.AuditEntry).
_ACTOR_MAX, _ACTION_MAX, _TEXT_MAX, _CLIENT_MAX = 200, 200, 1000, 200


def _cut(value: str | None, size: int) -> str | None:
    """At most ``size`` characters, without NUL (which PostgreSQL does not store): an entry
    about a request that held one must still be written."""
    return None if value is None else value.replace("\x00", "\ufffd")[:size]


def outcome_of(status: int) -> Outcome:
    if status < 400:
        return Outcome.OK
    return Outcome.REFUSED if status < 500 else Outcome.ERROR


def record(sessions: sessionmaker[Session], entry: AuditEntry) -> None:
    """Write one entry in a transaction of its own. A failure is logged, not raised: the
    action it records has already happened (or been refused)."""
    try:
        with session_scope(sessions) as session:
            repo.add(session, entry)
    except Exception:
        log.exception("could not write the audit log entry for %s by %s", entry.action, entry.actor)


# --- the API -----------------------------------------------------------------------------

def api_entry(*, method: str, path: str, route_name: str | None, path_params: Mapping[str, object],
              actor: str | None, status: int, client: str | None, failed: bool = False,
              target: str | None = None) -> AuditEntry:
    """``route_name`` None: no route took the request (an unknown path or method). ``target``:
    what the endpoint named as the action's target, in place of its path parameters."""
    if target is None:
        target = ", ".join(f"{k}={v}" for k, v in path_params.items()) if route_name else None
    return AuditEntry(
        at=utcnow(), source=Source.API.value, actor=_cut(actor, _ACTOR_MAX),
        action=_cut(route_name or f"{method} {path}", _ACTION_MAX), target=_cut(target or None, _TEXT_MAX),
        method=_cut(method, 16), path=_cut(path, _TEXT_MAX), status=status,
        outcome=(Outcome.ERROR if failed else outcome_of(status)).value, client=_cut(client, _CLIENT_MAX))


# --- the `loa` command -------------------------------------------------------------------

def cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (e.g. in a container)
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def cli_changes(command_path: Sequence[str]) -> bool:
    """Whether a command (["receivers", "revoke"]) may change the database."""
    if not command_path:
        return False
    return command_path[-1] not in _READ_ONLY_COMMANDS and command_path[0] not in _READ_ONLY_GROUPS


def _argument_text(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ",".join(_argument_text(v) for v in value)
    return str(value)


def cli_target(arguments: Mapping[str, object]) -> str | None:
    """The arguments given (left-out options are not listed), secrets redacted."""
    parts = []
    for name, value in arguments.items():
        if value is None or value is False or value == () or value == []:
            continue
        parts.append(f"{name}={REDACTED if _SECRET_ARGUMENT.search(name) else _argument_text(value)}")
    return ", ".join(parts) or None


def cli_entry(command: Sequence[str], arguments: Mapping[str, object], error: BaseException | None) -> AuditEntry:
    """``error``: what ended the command, None when it succeeded."""
    import typer

    detail: str | None = None
    if error is None:
        code, outcome = 0, Outcome.OK
    elif isinstance(error, LoaError):
        code, outcome, detail = 1, Outcome.REFUSED, f"{error.message_vi} / {error.message_en}"
    elif isinstance(error, typer.Exit):
        code = error.exit_code
        outcome = Outcome.OK if code == 0 else Outcome.REFUSED
    elif isinstance(error, (typer.Abort, KeyboardInterrupt)):
        code, outcome, detail = 1, Outcome.REFUSED, "đã huỷ / aborted"
    else:
        # Only the kind of failure: its text may hold a database URL with its password.
        code, outcome, detail = 1, Outcome.ERROR, type(error).__name__
    return AuditEntry(
        at=utcnow(), source=Source.CLI.value, actor=_cut(cli_actor(), _ACTOR_MAX),
        action=_cut(" ".join(["loa", *command]), _ACTION_MAX), target=_cut(cli_target(arguments), _TEXT_MAX),
        status=code, outcome=outcome.value, client=_cut(socket.gethostname(), _CLIENT_MAX),
        detail=_cut(detail, _TEXT_MAX))


# --- reading -----------------------------------------------------------------------------

def list_entries(session: Session, *, scope: ScopeLike = None, actor: str | None = None,
                 action: str | None = None, since: datetime | None = None, until: datetime | None = None,
                 limit: int = 100, offset: int = 0) -> Sequence[AuditEntry]:
    return repo.list_entries(session, scope=scope, actor=actor, action=action, since=since, until=until,
                             limit=limit, offset=offset)
