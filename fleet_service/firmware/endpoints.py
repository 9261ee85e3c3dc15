"""Firmware releases API: upload a signed bundle, list, show, withdraw. Engineers
(technicians) and admins only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from fleet_service.audit.middleware import TARGET_STATE
from fleet_service.auth.dependencies import Principal, require_roles
from fleet_service.auth.models import Role
from fleet_service.db import ID_MAX, RowId
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.errors import LoaError
from fleet_service.firmware import repository, service
from fleet_service.firmware.bundle import MAX_UPLOAD_BYTES
from fleet_service.firmware.schemas import HARDWARE_MAX, ReleaseDetailOut, ReleaseOut, WithdrawRequest

router = APIRouter(tags=["firmware"])

EngineerPrincipal = Annotated[Principal, Depends(require_roles(Role.TECHNICIAN))]


class BundleTooLarge(LoaError):
    status_code = 413
    code = "too_large"


async def bundle_body(request: Request) -> bytes:
    """The request's body, read up to MAX_UPLOAD_BYTES (the API's own limit applies first)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES:
            raise BundleTooLarge(f"Gói firmware quá lớn: tối đa {MAX_UPLOAD_BYTES} byte",
                                 f"The firmware bundle is too large: at most {MAX_UPLOAD_BYTES} bytes")
    return bytes(body)


def _actor(principal: Principal) -> service.Actor:
    return service.Actor(principal.user_id, principal.username)


def _audit_target(request: Request, text: str) -> None:
    """What the audit log names as the action's target (an upload has no id in its path)."""
    setattr(request.state, TARGET_STATE, text)


# The body is read as bytes whatever its declared type (application/x-tar, as the CLI sends it,
# or application/octet-stream, as the API's description names it for generic clients).
@router.post("/firmware/releases", response_model=ReleaseDetailOut, status_code=status.HTTP_201_CREATED,
             openapi_extra={"requestBody": {"required": True, "description": "an uncompressed tar of the bundle",
                                            "content": {"application/octet-stream": {
                                                "schema": {"type": "string", "format": "binary"}}}}})
def upload_firmware_release(request: Request, data: Annotated[bytes, Depends(bundle_body)], session: SessionDep,
                            runtime: RuntimeDep, principal: EngineerPrincipal) -> ReleaseDetailOut:
    """Tải lên bản phát hành / upload a signed release bundle: an uncompressed tar of
    manifest.json, manifest.sig and the files (``loa firmware upload``). Stored only when the
    signature verifies against a trusted key (LOA_FIRMWARE_KEYS), the manifest is well formed
    and every file has the length and SHA-256 the manifest gives; otherwise refused (422,
    naming what is wrong) and nothing is stored."""
    release = service.upload(session, data, service.trusted_keys(runtime.settings), _actor(principal))
    _audit_target(request, f"release_id={release.id}, version={release.version}, hardware={release.hardware}")
    return service.detail_out(session, release)


@router.get("/firmware/releases", response_model=list[ReleaseOut])
def list_firmware_releases(
    session: SessionDep, principal: EngineerPrincipal,
    hardware: Annotated[str | None, Query(max_length=HARDWARE_MAX, description="only this hardware family")] = None,
    include_withdrawn: Annotated[bool, Query(description="withdrawn releases too")] = True,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[ReleaseOut]:
    """Các bản phát hành / releases, by hardware family, newest version first."""
    rows = repository.list_releases(session, hardware=hardware, include_withdrawn=include_withdrawn,
                                    limit=limit, offset=offset)
    return [service.release_out(r) for r in rows]


@router.get("/firmware/releases/{version}", response_model=ReleaseDetailOut)
def get_firmware_release(
    version: str, session: SessionDep, principal: EngineerPrincipal,
    hardware: Annotated[str | None, Query(max_length=HARDWARE_MAX,
                                          description="the hardware family, when the version exists for several")] = None,
) -> ReleaseDetailOut:
    """Một bản phát hành và các tệp của nó / one release and its files."""
    return service.detail_out(session, service.get_by_version(session, version, hardware))


@router.post("/firmware/releases/{release_id}/withdraw", response_model=ReleaseOut)
def withdraw_firmware_release(release_id: RowId, data: WithdrawRequest, request: Request, session: SessionDep,
                              runtime: RuntimeDep, principal: EngineerPrincipal) -> ReleaseOut:
    """Thu hồi / withdraw a release: it stays on record but must not be installed any more.
    The withdrawal is recorded for rollouts (not written yet) to react to."""
    release = service.withdraw(session, release_id, data.reason, _actor(principal))
    _audit_target(request, f"release_id={release.id}, version={release.version}, hardware={release.hardware}")
    session.commit()
    if runtime.outbox is not None:  # in the leading worker's process: applied at once
        runtime.outbox.wake()
    return service.release_out(release)
