"""``loa dashboards build`` and ``loa dashboards publish``."""

from __future__ import annotations

from typing import Annotated

import typer

from fleet_service.cli_support import error
from fleet_service.errors import LoaError

dashboards_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@dashboards_app.command("build")
def build(check: Annotated[bool, typer.Option(help="Chỉ kiểm tra / only check that dashboards/json/ is up to date")] = False) -> None:
    """Tạo JSON / write dashboards/json/ from the dashboards' code."""
    import dashboards

    if check:
        stale = dashboards.stale()
        if stale:
            typer.echo(f"Lỗi: JSON cũ, chạy `loa dashboards build` / Error: out of date: {', '.join(stale)}", err=True)
            raise typer.Exit(1)
        typer.echo("JSON khớp với mã / dashboards/json/ matches the code")
        return
    for path in dashboards.write_all():
        typer.echo(f"đã ghi / wrote {path}")


@dashboards_app.command("publish")
def publish(
    url: Annotated[str, typer.Option(help="Grafana, e.g. https://grafana.example.vn")],
    token: Annotated[str, typer.Option(envvar="LOA_GRAFANA_TOKEN", help="Mã tài khoản dịch vụ / service account token (LOA_GRAFANA_TOKEN)")],
    datasources: Annotated[bool, typer.Option(help="Ghi cả nguồn dữ liệu / also create or update the datasources (secrets from LOA_GRAFANA_*)")] = False,
) -> None:
    """Đăng bảng điều khiển / publish the dashboards to a running Grafana (folder "Loa", overwriting)."""
    from fleet_service.dashboards.service import publish as publish_to

    try:
        result = publish_to(url.rstrip("/"), token, with_datasources=datasources)
    except LoaError as exc:
        raise error(exc.message_vi, exc.message_en) from None
    for uid in result.datasources_created:
        typer.echo(f"nguồn dữ liệu mới / datasource created: {uid}")
    for uid in result.datasources_updated:
        typer.echo(f"nguồn dữ liệu cập nhật / datasource updated: {uid}")
    if result.folder_created:
        typer.echo("thư mục mới / folder created: Loa")
    typer.echo(f"đã đăng {len(result.dashboards)} bảng / published {len(result.dashboards)} dashboards: "
               + ", ".join(result.dashboards))
