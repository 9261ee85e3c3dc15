"""Loa's Grafana dashboards as code. ``render_all()`` gives each dashboard's JSON; the files in
dashboards/json/ are that output (``loa dashboards build``) and a test keeps them equal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import alerts, connectivity_events, firmware, fleet_overview, quarterly_evaluation, station_detail

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
PROVISIONING_DIR = HERE / "provisioning"
FOLDER = "Loa"

BUILDERS: dict[str, Callable[[], dash.Dashboard]] = {
    fleet_overview.UID: fleet_overview.build,
    station_detail.UID: station_detail.build,
    quarterly_evaluation.UID: quarterly_evaluation.build,
    firmware.UID: firmware.build,
    connectivity_events.UID: connectivity_events.build,
    alerts.UID: alerts.build,
}


def render(uid: str) -> dict[str, object]:
    """One dashboard as Grafana's JSON model, panels numbered in order."""
    model = json.loads(json.dumps(BUILDERS[uid]().build(), cls=JSONEncoder))
    for number, panel in enumerate(model.get("panels", []), start=1):
        panel["id"] = number
    return model


def render_all() -> dict[str, dict[str, object]]:
    return {uid: render(uid) for uid in BUILDERS}


def serialise(model: dict[str, object]) -> str:
    return json.dumps(model, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def json_path(uid: str) -> Path:
    return JSON_DIR / f"{uid}.json"


def write_all() -> list[Path]:
    JSON_DIR.mkdir(exist_ok=True)
    written = []
    for uid, model in render_all().items():
        path = json_path(uid)
        path.write_text(serialise(model), encoding="utf-8")
        written.append(path)
    return written


def stale() -> list[str]:
    """Dashboards whose file in dashboards/json/ differs from what the code builds."""
    out = []
    for uid, model in render_all().items():
        path = json_path(uid)
        if not path.exists() or path.read_text(encoding="utf-8") != serialise(model):
            out.append(uid)
    return out
