"""The dashboards as code: the JSON kept in dashboards/json/ is exactly what the code builds, every
panel is labelled in Vietnamese and English and reads one of the provisioned datasources, and the
provisioning files point where docker-compose.yml mounts them."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import dashboards
from dashboards.common import TIMEZONE
from dashboards.queries import INFLUX_UID, POSTGRES_UID
from fleet_service.cli import app

MODELS = dashboards.render_all()


def test_json_files_equal_what_the_code_builds():
    assert dashboards.stale() == [], "run `loa dashboards build`"
    assert sorted(p.stem for p in dashboards.JSON_DIR.glob("*.json")) == sorted(dashboards.BUILDERS)


def test_build_check_fails_on_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboards, "JSON_DIR", tmp_path)
    runner = CliRunner()
    stale = runner.invoke(app, ["dashboards", "build", "--check"])
    assert stale.exit_code == 1 and "out of date" in stale.output
    assert runner.invoke(app, ["dashboards", "build"]).exit_code == 0
    assert runner.invoke(app, ["dashboards", "build", "--check"]).exit_code == 0
    assert json.loads((tmp_path / "loa-fleet-overview.json").read_text())["uid"] == "loa-fleet-overview"


@pytest.mark.parametrize("uid", sorted(MODELS))
def test_every_panel_is_bilingual_and_reads_a_provisioned_datasource(uid):
    model = MODELS[uid]
    assert model["timezone"] == TIMEZONE and " / " in model["title"]
    assert [v["name"] for v in model["templating"]["list"]] == ["region", "station"]
    assert model["panels"], "a dashboard without panels"
    for panel in model["panels"]:
        assert " / " in panel["title"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in {INFLUX_UID, POSTGRES_UID}
            assert target["datasource"] == panel["datasource"]
            text = target.get("query") or target["rawSql"]
            assert text.strip()
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_provisioning_files_name_the_datasources_and_the_mounted_dashboards():
    sources = yaml.safe_load((dashboards.PROVISIONING_DIR / "datasources" / "loa.yaml").read_text())["datasources"]
    assert {s["uid"]: s["type"] for s in sources} == {INFLUX_UID: "influxdb", POSTGRES_UID: "grafana-postgresql-datasource"}
    for source in sources:
        # Secrets only from the environment.
        assert source["secureJsonData"]["password"].startswith("${")
    influx = next(s for s in sources if s["uid"] == INFLUX_UID)
    assert influx["jsonData"]["version"] == "InfluxQL" and influx["jsonData"]["dbName"] == "loa"
    [provider] = yaml.safe_load((dashboards.PROVISIONING_DIR / "dashboards" / "loa.yaml").read_text())["providers"]
    assert provider["folder"] == dashboards.FOLDER and provider["options"]["path"] == "/var/lib/grafana/dashboards/loa"
