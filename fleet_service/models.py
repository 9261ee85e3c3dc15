"""Every table, imported in one place so that Alembic and create-time checks see them all."""

from fleet_service.alerts.models import (AlertCondition, Crew, CrewMember, Incident, Notification, RuleOverride,
                                         Silence)
from fleet_service.audit.models import AuditEntry
from fleet_service.auth.models import ApiToken, User
from fleet_service.commands.models import Command, CommandTarget
from fleet_service.db import Base
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.outbox.models import OutboxEntry
from fleet_service.schedules.models import ReceiverSchedule, Schedule, ScheduleSlotRow
from fleet_service.registry.models import Receiver, ReceiverCredential, Region, Station, StationAssignment
from fleet_service.rollouts.models import Rollout, RolloutTarget
from fleet_service.uptime.models import ConnectivityInterval, ReceiverLiveState
from fleet_service.worker.models import WorkerLease

__all__ = [
    "AlertCondition",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Command",
    "CommandTarget",
    "ConnectivityInterval",
    "Crew",
    "CrewMember",
    "FirmwareDownload",
    "FirmwareRelease",
    "FirmwareReleaseFile",
    "Incident",
    "Notification",
    "OutboxEntry",
    "Receiver",
    "ReceiverCredential",
    "ReceiverLiveState",
    "ReceiverSchedule",
    "Region",
    "Rollout",
    "RolloutTarget",
    "RuleOverride",
    "Schedule",
    "ScheduleSlotRow",
    "Silence",
    "Station",
    "StationAssignment",
    "User",
    "WorkerLease",
]
