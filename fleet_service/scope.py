"""Region scope: which part of the fleet a caller may see and act on, decided in one place.

A scope is a subtree of the region tree, named by its materialised path ("/1/7/"), or the
whole fleet. Every query that filters by region takes its clause from here, and single
objects are checked with ``contains``: a prefix match written by hand ("/1/2" matching
"/1/23/") is the mistake this module exists to make impossible. The same class names the
subtree of a command's or a schedule's target ("the receivers under region 7").

    scope = principal.scope                       # RegionScope("/1/7/") or the whole fleet
    session.scalars(select(Station).where(scope.stations()))
    scope.contains(region.path)                   # one object

Clauses are subqueries on ids (``Station.region_id IN (SELECT ...)``), not joins: a caller
adds them to any query without joining the region tree itself. The subqueries use aliases,
so that a query which does join ``regions`` does not correlate them away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, or_, select, true
from sqlalchemy.orm import aliased

from fleet_service.auth.models import User
from fleet_service.commands.models import Command, CommandTarget, TargetKind
from fleet_service.registry.models import Receiver, Region, Station
from fleet_service.schedules.models import Schedule

SEPARATOR = "/"


def normalised_path(path: str) -> str:
    """"/1/7" or "1/7/" -> "/1/7/": a path compared as a prefix always ends with the
    separator, so "/1/2/" never matches "/1/23/"."""
    parts = [p for p in path.split(SEPARATOR) if p]
    return SEPARATOR + "".join(f"{p}{SEPARATOR}" for p in parts)


@dataclass(frozen=True, slots=True)
class RegionScope:
    """``path`` None: the whole fleet (and what belongs to no region, like a receiver on no
    station or a user without a region). Otherwise the subtree at ``path``."""

    path: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", normalised_path(self.path))

    @classmethod
    def of(cls, scope: ScopeLike) -> RegionScope:
        """From what callers hold: a RegionScope, a region path, or None (whole fleet)."""
        return scope if isinstance(scope, RegionScope) else cls(scope)

    @property
    def whole_fleet(self) -> bool:
        return self.path is None

    @property
    def restricted(self) -> bool:
        return self.path is not None

    def region_ids_on_path(self) -> list[int]:
        """The scope's region and every region above it: its path is made of their ids."""
        return [] if self.path is None else [int(p) for p in self.path.split(SEPARATOR) if p]

    # --- single objects ------------------------------------------------------------------

    def contains(self, path: str | None) -> bool:
        """Whether a region path lies in the scope; None (no region) only in the whole fleet."""
        if self.path is None:
            return True
        return path is not None and normalised_path(path).startswith(self.path)

    def within(self, other: ScopeLike) -> bool:
        """Whether this whole scope lies inside ``other`` (a subtree of it, or the same)."""
        return RegionScope.of(other).contains(self.path) if self.path is not None else RegionScope.of(other).whole_fleet

    # --- clauses -------------------------------------------------------------------------

    def path_clause(self, column: Any) -> ColumnElement[bool]:
        """``column`` (a region path) within the scope."""
        if self.path is None:
            return true()
        return column.startswith(self.path, autoescape=True)

    def regions(self) -> ColumnElement[bool]:
        """On ``Region`` (as selected or joined by the caller)."""
        return self.path_clause(Region.path)

    def region_ids(self) -> Select[int]:
        region = aliased(Region)
        return select(region.id).where(self.path_clause(region.path))

    def station_ids(self) -> Select[int]:
        station = aliased(Station)
        return select(station.id).where(station.region_id.in_(self.region_ids()))

    def receiver_ids(self) -> Select[str]:
        """Receivers now on a station of the scope (with the whole fleet: every receiver)."""
        receiver = aliased(Receiver)
        query = select(receiver.id)
        return query if self.path is None else query.where(receiver.station_id.in_(self.station_ids()))

    def stations(self) -> ColumnElement[bool]:
        return true() if self.path is None else Station.region_id.in_(self.region_ids())

    def receivers(self) -> ColumnElement[bool]:
        """A receiver on no station belongs to no region: only the whole fleet has it."""
        return true() if self.path is None else Receiver.station_id.in_(self.station_ids())

    def users(self) -> ColumnElement[bool]:
        """A user without a region (a whole-fleet admin) only in the whole fleet."""
        return true() if self.path is None else User.region_id.in_(self.region_ids())

    def schedules(self) -> ColumnElement[bool]:
        """A schedule whose station or region lies in the scope, where it is now."""
        if self.path is None:
            return true()
        return or_(and_(Schedule.target_kind == "station", Schedule.target_id.in_(self.station_ids())),
                   and_(Schedule.target_kind == "region", Schedule.target_id.in_(self.region_ids())))

    def command_targets(self) -> ColumnElement[bool]:
        """The rows of ``command_targets`` for the scope's receivers."""
        return true() if self.path is None else CommandTarget.receiver_id.in_(self.receiver_ids())

    def commands(self) -> ColumnElement[bool]:
        """A command concerns the scope when its target lies in it (where the target is now),
        when it went to the whole fleet or to a region above the scope (a district-wide play
        reaches the commune's receivers), or when any of its receivers is in the scope."""
        if self.path is None:
            return true()
        return or_(
            Command.target_kind == TargetKind.FLEET.value,
            Command.target_region_id.in_(self.region_ids()),
            Command.target_region_id.in_(self.region_ids_on_path()),
            Command.target_station_id.in_(self.station_ids()),
            Command.target_receiver_id.in_(self.receiver_ids()),
            exists().where(CommandTarget.command_id == Command.id, self.command_targets()),
        )

    def audit_entries(self) -> ColumnElement[bool]:
        """The audit log belongs to no region: it spans the fleet, so only the whole fleet
        reads it (a subtree's admin would learn of the others)."""
        return true() if self.path is None else false()


WHOLE_FLEET = RegionScope()

# What the services take as ``scope``: a RegionScope, a region path ("/1/7/"), or None for the
# whole fleet (the CLI, the worker).
ScopeLike = RegionScope | str | None
