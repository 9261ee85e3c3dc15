"""FastAPI dependencies shared by every domain's endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from fleet_service.db import session_scope
from fleet_service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One unit of work per request: committed when the endpoint returns, rolled back on error."""
    with session_scope(runtime.sessions) as session:
        yield session


# Committed before the answer is sent ("function" scope): a 2xx means the change is in the
# database, and a commit that fails answers as an error instead of being lost behind a 2xx.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
