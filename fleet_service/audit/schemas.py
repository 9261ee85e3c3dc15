"""What the audit API gives."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime = Field(description="UTC")
    source: str = Field(description="api or cli")
    actor: str | None = Field(description="user name, username tried at sign-in, or cli:<os user>@<host>; "
                                          "null: an API caller that could not be identified")
    action: str = Field(description="the API route's name (revoke_receiver) or the command (loa receivers revoke)")
    target: str | None = Field(description="the route's path parameters or the command's arguments, secrets redacted")
    method: str | None
    path: str | None
    status: int | None = Field(description="HTTP status, or the command's exit code")
    outcome: str = Field(description="ok, refused or error")
    client: str | None = Field(description="client address, or the host the command ran on")
    detail: str | None = Field(description="why a command was refused or failed")
