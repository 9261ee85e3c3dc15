"""The audit log: one row per operator action, through the API or the ``loa`` command, whether
it was carried out or refused. Rows are only ever added."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class Source(StrEnum):
    API = "api"
    CLI = "cli"


class Outcome(StrEnum):
    OK = "ok"            # carried out
    REFUSED = "refused"  # turned down: not signed in, not allowed, invalid, not found, rate-limited
    ERROR = "error"      # failed on the server's side


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(8))
    # Who: the signed-in user's name, the username tried at sign-in, "cli:<os user>@<host>";
    # None when an API caller could not be identified (no token, or an invalid one).
    actor: Mapped[str | None] = mapped_column(String(200), index=True)
    # What: the API route's name (revoke_receiver) or the command's path (loa receivers revoke).
    action: Mapped[str] = mapped_column(String(200), index=True)
    # On what: the route's path parameters, or the command's arguments with secrets redacted.
    target: Mapped[str | None] = mapped_column(String(1000))
    method: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str | None] = mapped_column(String(1000))
    # The HTTP status, or the command's exit code.
    status: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(16))
    # From where: the client's address, or the host the command ran on.
    client: Mapped[str | None] = mapped_column(String(200))
    # Why a command was refused or failed (its error message).
    detail: Mapped[str | None] = mapped_column(String(1000))
