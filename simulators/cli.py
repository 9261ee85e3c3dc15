"""``loa simulate``: run virtual receivers against a broker, with faults, writing ground truth;
and ``loa demo``. Both reach ``loa`` through the ``loa.commands`` entry points (pyproject.toml),
so that the service does not import the simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

from simulators.fleet import Fleet
from simulators.scenario import DEFAULT_LENGTHS, FaultKind, Scenario

simulate_app = typer.Typer(
    help="Mô phỏng thiết bị thu / virtual receivers: fault injection and ground truth.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _load_credentials(path: Path, limit: int | None) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read credentials from {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise typer.BadParameter(f"{path} must hold a JSON object {{receiver id: password}}")
    ids = sorted(data)
    if limit is not None:
        if limit > len(ids):
            raise typer.BadParameter(f"--receivers {limit}: {path} holds only {len(ids)} receivers")
        ids = ids[:limit]
    return {rid: data[rid] for rid in ids}


def _load_sessions(path: Path | None) -> dict[str, int]:
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): int(v) for k, v in data.items()}


Host = Annotated[str, typer.Option(help="Broker host.")]
Port = Annotated[int, typer.Option(help="Broker port.")]


def _raise_open_files_limit(receivers: int) -> None:
    """Each receiver holds a socket: lift the soft limit on open files to the hard one (a usual
    soft limit of 1,024 would stop a run at about a thousand receivers), and warn when even the
    hard limit is too close."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and receivers + 100 > hard:
        typer.echo(f"Cảnh báo / warning: {receivers} receivers but only {hard} open files allowed per process",
                   err=True)


@simulate_app.command("run")
def run(
    credentials: Annotated[Path, typer.Argument(help="JSON file {receiver id: password}.")],
    host: Host = "127.0.0.1",
    port: Port = 1883,
    receivers: Annotated[int | None, typer.Option(help="Run only the first N receivers (sorted by id).")] = None,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 300.0,
    ground_truth: Annotated[Path, typer.Option(help="Ground-truth JSON-lines file (appended).")] = Path("ground-truth.jsonl"),
    keepalive: Annotated[int, typer.Option(help="MQTT keepalive, seconds.")] = 300,
    telemetry_interval: Annotated[float, typer.Option(help="Seconds between telemetry reports.")] = 300.0,
    firmware: Annotated[str, typer.Option(help="Firmware version the receivers report.")] = "loa-sim-1.0.0",
    seed: Annotated[int, typer.Option(help="Seed of the scenario and of all jitter.")] = 1,
    faults_min: Annotated[int, typer.Option(help="Fewest faults per receiver.")] = 0,
    faults_max: Annotated[int, typer.Option(help="Most faults per receiver.")] = 2,
    kind: Annotated[list[FaultKind] | None, typer.Option(help="Fault kinds to draw from (repeat; default all).")] = None,
    max_clock_skew: Annotated[float, typer.Option(help="Clock offset of skewed receivers, ± seconds.")] = 0.0,
    scenario: Annotated[Path | None, typer.Option(help="Replay this scenario file instead of a random one.")] = None,
    save_scenario: Annotated[Path | None, typer.Option(help="Write the scenario used to this file.")] = None,
    sessions_file: Annotated[Path | None, typer.Option(help="Session counters: read at start, written at the end.")] = None,
    backoff_base: Annotated[float, typer.Option(help="Reconnect backoff base, seconds.")] = 1.0,
    backoff_cap: Annotated[float, typer.Option(help="Reconnect backoff cap, seconds.")] = 60.0,
    connect_timeout: Annotated[float, typer.Option(help="TCP connect / CONNACK timeout, seconds.")] = 10.0,
    attach_delay: Annotated[float, typer.Option(help="Longest modem attach time after power-on, seconds.")] = 5.0,
    unsynced_fraction: Annotated[float, typer.Option(help="Fraction of receivers whose clock never syncs.")] = 0.0,
    fetch_streams: Annotated[bool | None, typer.Option(
        "--fetch-streams/--no-fetch-streams",
        help="Really fetch the streams receivers are told to play (default: for fleets of at most 100).")] = None,
    firmware_receivers: Annotated[int, typer.Option(
        help="Run this many of the receivers (the first by id) as real MicroPython firmware processes.")] = 0,
    firmware_dir: Annotated[Path | None, typer.Option(
        help="Directory for the firmware receivers' flash (default: a temporary one).")] = None,
    hardware: Annotated[str, typer.Option(help="Hardware family of the virtual boards (births' hw).")] = "esp32-a7670",
    update_key: Annotated[list[str] | None, typer.Option(
        help="A release signing public key the receivers trust, as LOA_FIRMWARE_KEYS gives it: base64 of its "
             "32 bytes or a .pub file (repeat for two; without one every update fails its signature check).")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "WARNING",
) -> None:
    """Run N receivers for DURATION seconds under a fault scenario."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    creds = _load_credentials(credentials, receivers)
    _raise_open_files_limit(len(creds))
    if scenario is not None:
        plan = Scenario.load(scenario)
        duration = plan.duration
    else:
        plan = Scenario.random(
            sorted(creds), duration, seed=seed, faults_per_receiver=(faults_min, faults_max),
            kinds=tuple(kind) if kind else tuple(FaultKind), lengths=DEFAULT_LENGTHS, max_clock_skew=max_clock_skew,
            unsynced_fraction=unsynced_fraction,
        )
    if save_scenario is not None:
        plan.save(save_scenario)
    if not 0 <= firmware_receivers <= len(creds):
        raise typer.BadParameter(f"--firmware-receivers {firmware_receivers}: 0 to {len(creds)}")
    if firmware_receivers:
        from simulators.firmware import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise typer.BadParameter(f"--firmware-receivers: {reason}")
    fleet = Fleet(
        host, port, creds,
        keepalive=keepalive, telemetry_interval=telemetry_interval, firmware=firmware,
        connect_timeout=connect_timeout, backoff_base=backoff_base, backoff_cap=backoff_cap,
        attach_delay=(0.0, attach_delay), sessions=_load_sessions(sessions_file),
        ground_truth=ground_truth, seed=seed, fetch_streams=fetch_streams,
        firmware_receivers=sorted(creds)[:firmware_receivers], firmware_dir=firmware_dir,
        hardware=hardware, update_keys=update_key or (),
    )

    async def main() -> tuple[float, float]:
        await fleet.start()
        start = time.time()
        try:
            await fleet.run_scenario(plan)
        finally:
            end = time.time()
            await fleet.stop()
        return start, end

    real = f" ({firmware_receivers} running the MicroPython firmware)" if firmware_receivers else ""
    typer.echo(f"{len(creds)} receivers{real} → {host}:{port}, {duration:g}s, {len(plan.faults)} faults; "
               f"ground truth in {ground_truth}")
    try:
        start, end = asyncio.run(main())
    except KeyboardInterrupt:
        typer.echo("interrupted")
        raise typer.Exit(130) from None
    finally:
        if sessions_file is not None:
            sessions_file.write_text(json.dumps(fleet.sessions(), indent=1) + "\n", encoding="utf-8")
    availability = [fleet.ground_truth.availability(rid, start, end) for rid in creds]
    statuses = [fleet.status(rid) for rid in creds]
    errors = sorted({s.last_error for s in statuses if s.last_error})
    typer.echo(
        f"availability: mean {statistics.fmean(availability):.4f}, min {min(availability):.4f}; "
        f"CONNECTs {sum(s.connects for s in statuses)}, refused {sum(s.refused for s in statuses)}, "
        f"telemetry {sum(s.telemetry_sent for s in statuses)}"
    )
    for error in errors[:5]:
        typer.echo(f"last error: {error}")


@simulate_app.command("scenario")
def scenario_command(
    receivers: Annotated[Path, typer.Argument(help="Credentials JSON (only its receiver ids are used).")],
    duration: Annotated[float, typer.Option(help="Seconds.")] = 300.0,
    seed: Annotated[int, typer.Option()] = 1,
    faults_min: Annotated[int, typer.Option()] = 0,
    faults_max: Annotated[int, typer.Option()] = 2,
    kind: Annotated[list[FaultKind] | None, typer.Option(help="Fault kinds (repeat; default all).")] = None,
    max_clock_skew: Annotated[float, typer.Option()] = 0.0,
    output: Annotated[Path | None, typer.Option(help="File to write (default: standard output).")] = None,
) -> None:
    """Generate a seeded random fault scenario as JSON."""
    ids = sorted(_load_credentials(receivers, None))
    plan = Scenario.random(
        ids, duration, seed=seed, faults_per_receiver=(faults_min, faults_max),
        kinds=tuple(kind) if kind else tuple(FaultKind), max_clock_skew=max_clock_skew,
    )
    if output is None:
        typer.echo(plan.to_json())
    else:
        plan.save(output)


@simulate_app.command("memory")
def memory_command(
    host: Host = "127.0.0.1",
    port: Port = 1883,
    receivers: Annotated[int, typer.Option(help="How many receivers.")] = 1000,
    credentials: Annotated[Path | None, typer.Option(help="Credentials JSON; default: generated ids for a broker that allows anonymous clients.")] = None,
    settle: Annotated[float, typer.Option(help="Seconds of steady reporting before measuring.")] = 5.0,
) -> None:
    """Measure the Python memory per virtual receiver (tracemalloc) at steady state."""
    from simulators.memory import measure

    if credentials is not None:
        creds = _load_credentials(credentials, receivers)
    else:
        creds = {f"sim-{i:05d}": "anonymous" for i in range(receivers)}
    report = asyncio.run(measure(host, port, creds, settle=settle))
    typer.echo(str(report))


@simulate_app.command("availability")
def availability_command(
    ground_truth: Annotated[Path, typer.Argument(help="Ground-truth JSON-lines file.")],
    start: Annotated[float, typer.Option(help="Window start, Unix seconds.")],
    end: Annotated[float, typer.Option(help="Window end, Unix seconds.")],
) -> None:
    """Print each receiver's true availability over a window, from a ground-truth file."""
    from simulators.ground_truth import GroundTruth

    truth = GroundTruth.load(ground_truth)
    for rid in truth.receivers:
        typer.echo(f"{rid}\t{truth.availability(rid, start, end):.6f}")


def demo(
    receivers_per_station: int = typer.Option(2, "--receivers-per-station", min=1, max=50),
    duration: float | None = typer.Option(None, help="Giây; mặc định chạy đến Ctrl-C / seconds; default until Ctrl-C"),
    mqtt_port: int | None = typer.Option(None, help="Mặc định 1883, hoặc cổng trống / default 1883, or a free port"),
    api_port: int | None = typer.Option(None, help="Mặc định 8000, hoặc cổng trống / default 8000, or a free port"),
    directory: Path = typer.Option(Path(".loa/demo"), "--dir", help="Dữ liệu demo / demo data"),
    keep: bool = typer.Option(False, help="Giữ dữ liệu lần trước / keep the previous run's data"),
    seed: int = typer.Option(2023, help="Hạt giống kịch bản lỗi / fault scenario seed"),
) -> None:
    """Chạy thử / demo: embedded broker + service + SQLite + a simulated Đại Từ fleet with faults."""
    # Imported here: it loads the whole service, which no other ``loa`` command needs to pay for.
    from simulators.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run_demo(directory, receivers_per_station, duration, mqtt_port, api_port, keep, seed))
    except KeyboardInterrupt:
        typer.echo("Đã dừng / stopped")
