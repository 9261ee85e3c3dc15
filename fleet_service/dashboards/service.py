"""Publishing to a running Grafana: the folder "Loa", the dashboards (overwritten, so publishing
twice changes nothing), and optionally the datasources of the provisioning file."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import niquests
import yaml
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

import dashboards
from fleet_service.errors import Forbidden, Invalid, LoaError, NotAuthenticated, Unavailable

FOLDER_UID = "loa"
# A Grafana that has not answered in this long is not coming: fail with a clear message.
TIMEOUT_S = 15.0
DATASOURCES_FILE = dashboards.PROVISIONING_DIR / "datasources" / "loa.yaml"
_ENV_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# Provisioning-only keys that the HTTP API does not take.
_PROVISIONING_ONLY = {"editable", "orgId", "version"}


@dataclass
class Published:
    folder_created: bool = False
    dashboards: list[str] = field(default_factory=list)
    datasources_created: list[str] = field(default_factory=list)
    datasources_updated: list[str] = field(default_factory=list)


def datasources_from_provisioning(path: Path = DATASOURCES_FILE,
                                  environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The provisioning file's datasources with $VAR / ${VAR} expanded as Grafana expands them;
    a variable that is not set is an error, never an empty secret."""
    environ = os.environ if environ is None else environ
    sources = yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    missing: set[str] = set()

    def expand(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        if isinstance(value, str):
            missing.update(a or b for a, b in _ENV_REFERENCE.findall(value) if (a or b) not in environ)
            return _ENV_REFERENCE.sub(lambda m: environ.get(m.group(1) or m.group(2), ""), value)
        return value

    expanded = [expand({k: v for k, v in source.items() if k not in _PROVISIONING_ONLY}) for source in sources]
    if missing:
        names = ", ".join(sorted(missing))
        raise Invalid(f"Thiếu biến môi trường cho nguồn dữ liệu: {names}",
                      f"environment variables missing for the datasources: {names}")
    return expanded


def publish(url: str, token: str, *, with_datasources: bool = False,
            environ: Mapping[str, str] | None = None) -> Published:
    sources = datasources_from_provisioning(environ=environ) if with_datasources else []
    api = GrafanaApi.from_url(url, credential=token, timeout=TIMEOUT_S)
    result = Published()
    try:
        for source in sources:
            if _exists(lambda: api.datasource.get_datasource_by_uid(source["uid"])):
                api.datasource.update_datasource_by_uid(source["uid"], source)
                result.datasources_updated.append(source["uid"])
            else:
                api.datasource.create_datasource(source)
                result.datasources_created.append(source["uid"])
        if not _exists(lambda: api.folder.get_folder(FOLDER_UID)):
            api.folder.create_folder(dashboards.FOLDER, uid=FOLDER_UID)
            result.folder_created = True
        for uid, model in dashboards.render_all().items():
            api.dashboard.update_dashboard({"dashboard": {**model, "id": None}, "folderUid": FOLDER_UID,
                                            "overwrite": True, "message": "loa dashboards publish"})
            result.dashboards.append(uid)
    except GrafanaException as exc:
        raise _explained(exc, url) from None
    except niquests.exceptions.RequestException as exc:  # refused, DNS, TLS: grafana-client lets these through
        raise _explained(GrafanaException(0, None, str(exc)), url) from None
    return result


def _exists(get: Any) -> bool:
    try:
        get()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return False
        raise
    return True


def _explained(exc: GrafanaException, url: str) -> LoaError:
    if isinstance(exc, GrafanaUnauthorizedError) or exc.status_code == 401:
        return NotAuthenticated("Grafana từ chối mã truy cập (401): kiểm tra --token (tài khoản dịch vụ, quyền Editor trở lên)",
                                "Grafana refused the token (401): check --token (a service account token, Editor or above)")
    if exc.status_code == 403:
        return Forbidden("Mã truy cập không đủ quyền (403): cần quyền Editor, hoặc Admin để ghi nguồn dữ liệu",
                         "the token lacks permission (403): Editor is needed, Admin to write datasources")
    if exc.status_code == 0:
        return Unavailable(f"Không kết nối được Grafana tại {url}: {exc.message}",
                           f"cannot reach Grafana at {url}: {exc.message}")
    return Unavailable(f"Grafana trả lỗi {exc.status_code}: {exc.message}",
                       f"Grafana answered {exc.status_code}: {exc.message}")
