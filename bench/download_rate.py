"""Firmware download endpoint vs Debian's nginx serving the same files, in the same run.

One invocation builds and signs a real release bundle from firmware/ (mpy-cross), stores it
through the release service with ``--receivers`` receivers offered it in a rollout, and starts
two servers on 127.0.0.1: the service (one API process as ``loa serve`` builds it, MQTT off,
uvicorn, with its download listener on a port of its own, ``LOA_DOWNLOAD_PORT``) and nginx
(``sendfile on``, one worker, access log off) over a copy of the same files. The service's
clients fetch from its download listener, or with ``--through-api`` from the API's own route
(the path receivers used before the listener).
Then, alternately and ``--repeat`` times, ``--clients`` client processes download the whole
release (manifest, signature, every file) again and again for ``--seconds``, each as its own
receiver with its own login (the service) or without one (nginx), over a kept-alive HTTP/1.1
connection; every ``--resume-every``-th file is fetched in two Range requests, as a download
cut by the 4G link resumes. Reported: bytes/s and requests/s of each, the ratio, and each
server's CPU (nginx's worker included); and the bytes the service counted per receiver against
what the clients got (the service writes its counts at its clean stop at the latest).
``--py-spy FILE`` samples the service through its first phase and prints where it spends it
(that phase is slowed by the sampling: not for a recorded run).

    python -m bench.download_rate                       # needs nginx: apt-get install nginx-light
    python -m bench.download_rate --repeat 3 --append bench/RESULTS.md
    PY_SPY=/tmp/tools/bin/py-spy python -m bench.download_rate --repeat 1 --py-spy /tmp/download.txt

Goal (issue "Firmware updates over 4G"): the service ≥ 0.5× nginx.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import http.client
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import (
    ROOT,
    CpuSampler,
    add_run_options,
    attach_py_spy,
    command_line,
    join_all,
    machine,
    machine_line,
    make_registry,
    results_section,
    wait_idle,
    wait_py_spy,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SERVICE, NGINX_KIND = "service", "nginx"


def prepare(workdir: Path, receivers: int) -> dict[str, Any]:
    """The registry, a signed release stored by the service, its receivers offered it, and the
    same files under nginx's root. Returns what the clients need."""
    from fleet_service.db import make_engine, make_sessionmaker, session_scope
    from fleet_service.firmware import bundle, keys
    from fleet_service.firmware import service as releases
    from fleet_service.firmware.cli import FIRMWARE_SOURCE
    from fleet_service.rollouts import service as rollouts
    from fleet_service.rollouts.models import RolloutTarget, TargetState
    from fleet_service.rollouts.schemas import RolloutCreate
    from fleet_service.scope import RegionScope

    registry = make_registry(workdir, receivers)
    private, public, _ = keys.generate(workdir / "key")
    built = workdir / "bundle"
    bundle.build(FIRMWARE_SOURCE, built, hardware="esp32-a7670", min_version="0.0.0")
    bundle.sign(built, private)
    trusted = [keys.load_public(str(public))]
    engine = make_engine(f"sqlite:///{registry.path}")
    try:
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as session:
            release = releases.upload(session, bundle.pack(built), trusted, releases.Actor(None, "bench"))
            rollout = rollouts.create_rollout(session, RolloutCreate(name="bench", release_id=release.id),
                                              rollouts.Actor(None, "bench", RegionScope()))
            for target in session.query(RolloutTarget).filter(RolloutTarget.rollout_id == rollout.id):
                target.state = TargetState.OFFERED.value
            release_id = release.id
    finally:
        engine.dispose()
    manifest = json.loads((built / "manifest.json").read_bytes())
    paths = ["manifest.json", "manifest.sig", *(f["path"] for f in manifest["files"])]
    # nginx's worker runs as an unprivileged user: the temporary directory must let it in.
    workdir.chmod(0o755)
    www = workdir / "www" / "release"
    for path in paths:
        (www / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built / path, www / path)
    sizes = {path: (built / path).stat().st_size for path in paths}
    return {"registry": registry, "release_id": release_id, "paths": paths, "sizes": sizes,
            "bundle_bytes": sum(sizes.values())}


def start_api(workdir: Path, database: Path, port: int, download_port: int) -> subprocess.Popen[bytes]:
    code = ("import uvicorn\n"
            "from fleet_service.app import create_app\n"
            "from fleet_service.config import Settings\n"
            "from fleet_service.runtime import Runtime\n"
            f"runtime = Runtime.from_settings(Settings(database_url='sqlite:///{database}', environment='local',\n"
            f"                                         download_port={download_port}))\n"
            f"uvicorn.run(create_app(runtime=runtime, mqtt=False), host='127.0.0.1', port={port}, log_level='warning')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(workdir / "api.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {workdir}/nginx-tmp;
  proxy_temp_path {workdir}/nginx-tmp;
  fastcgi_temp_path {workdir}/nginx-tmp;
  uwsgi_temp_path {workdir}/nginx-tmp;
  scgi_temp_path {workdir}/nginx-tmp;
  types {{ application/octet-stream mpy json sig; }}
  server {{
    listen 127.0.0.1:{port};
    root {workdir}/www;
  }}
}}
""")
    (workdir / "nginx-tmp").mkdir(exist_ok=True)
    return subprocess.Popen([NGINX, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def _client(kind: str, port: int, base: str, paths: list[str], sizes: dict[str, int], logins: list[tuple[str, str]],
            seconds: float, resume_every: int, start: Any, results: Any) -> None:
    try:
        results.put(_download(kind, port, base, paths, sizes, logins, seconds, resume_every, start))
    except BaseException as exc:  # said to the parent, never a hang
        results.put(("error", f"{kind} client: {exc!r}", 0, {}))


def _download(kind: str, port: int, base: str, paths: list[str], sizes: dict[str, int], logins: list[tuple[str, str]],
              seconds: float, resume_every: int, start: Any) -> tuple[str, int, int, dict[str, int]]:
    got = requests = 0
    per_receiver: dict[str, int] = {}
    start.wait()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for rid, password in logins:  # one whole release per receiver, in turn
            if time.monotonic() >= deadline:
                break
            headers = {}
            if kind == SERVICE:
                headers["Authorization"] = "Basic " + base64.b64encode(f"{rid}:{password}".encode()).decode()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for path in paths:
                n += 1
                ranges = [None]
                if resume_every and n % resume_every == 0 and sizes[path] > 1:
                    half = sizes[path] // 2
                    ranges = [f"bytes=0-{half - 1}", f"bytes={half}-"]
                for value in ranges:
                    connection.request("GET", f"{base}/{path}", headers={**headers, **({"Range": value} if value else {})})
                    response = connection.getresponse()
                    body = response.read()
                    if response.status not in (200, 206):
                        raise RuntimeError(f"{kind}: {path} answered {response.status}: {body[:200]!r}")
                    got += len(body)
                    requests += 1
                    per_receiver[rid] = per_receiver.get(rid, 0) + len(body)
            connection.close()
    return kind, got, requests, per_receiver


def run_phase(kind: str, port: int, base: str, setup: dict[str, Any], cfg: argparse.Namespace,
              server_pid: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    credentials = list(setup["registry"].credentials.items())
    shares = [credentials[i::cfg.clients] for i in range(cfg.clients)]
    processes = [ctx.Process(target=_client, args=(kind, port, base, setup["paths"], setup["sizes"], share,
                                                   cfg.seconds, cfg.resume_every, start, results), daemon=True)
                 for share in shares]
    for p in processes:
        p.start()
    time.sleep(1.0)
    sampler = CpuSampler({"server": [server_pid, *children(server_pid)], "clients": [p.pid for p in processes if p.pid]},
                         interval_s=0.25, deadline_s=cfg.seconds + 60)
    sampler.start()
    t0 = time.monotonic()
    start.set()
    outcomes = [results.get(timeout=cfg.seconds + 120) for _ in processes]
    t1 = time.monotonic()
    failed = [o[1] for o in outcomes if o[0] == "error"]
    if failed:
        raise RuntimeError("; ".join(failed))
    sampler.stop()
    join_all(processes)
    per_receiver: dict[str, int] = {}
    for _, _, _, part in outcomes:
        for rid, n in part.items():
            per_receiver[rid] = per_receiver.get(rid, 0) + n
    got = sum(o[1] for o in outcomes)
    return {"kind": kind, "bytes": got, "requests": sum(o[2] for o in outcomes), "seconds": t1 - t0,
            "rate": got / (t1 - t0), "cores": sampler.cores(t0, t1), "per_receiver": per_receiver}


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (nginx's master does no work: its worker does)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def http_implementation() -> str:
    """What uvicorn parses HTTP with here ("auto": httptools when installed, else h11)."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def served_by(through_api: bool) -> str:
    if through_api:
        return f"the service's API route (uvicorn, HTTP by {http_implementation()})"
    return "the service's download listener (asyncio, httptools)"


# Frames of the process and event-loop plumbing, left out of the inclusive list.
SPY_PLUMBING = ("asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "<string>", "threading.py",
                "concurrent/futures/thread.py", "uvicorn/server.py", "uvicorn/main.py")


def spy_summary(path: str, top: int = 25) -> str:
    """The functions on the stack in most samples of the service (inclusive) and those most
    often on top (self), from py-spy's collapsed stacks."""
    total = in_threads = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            total += k
            frames = [frame.rsplit(":", 1)[0] for frame in stack.split(";")]
            for frame in set(frames):
                if not any(part in frame for part in SPY_PLUMBING):
                    inclusive[frame] += k
            own[frames[-1]] += k
            if "Thread.run" in stack:
                in_threads += k
    if not total:
        return "no samples"
    lines = [f"py-spy: {total} samples of the service (the thread holding the GIL), {100 * in_threads / total:.1f}% "
             "in worker threads (the access checks' queries, the counts' writes), the rest in the event loop", "",
             "on the stack (inclusive):"]
    lines += [f"  {100 * k / total:5.1f}%  {frame}" for frame, k in inclusive.most_common(top)]
    lines += ["", "on top (self):"] + [f"  {100 * k / total:5.1f}%  {frame}" for frame, k in own.most_common(top)]
    return "\n".join(lines)


def served_by_service(database: Path, release_id: int) -> dict[str, int]:
    from fleet_service.db import make_engine, make_sessionmaker, session_scope
    from fleet_service.downloads import repository

    engine = make_engine(f"sqlite:///{database}")
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            return repository.served(session, release_id)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download_rate", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=200, help="receivers offered the release (default 200)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="phases of each server (default 3)")
    parser.add_argument("--resume-every", type=int, default=5,
                        help="every Nth file is fetched in two Range requests (default 5; 0: never)")
    parser.add_argument("--through-api", action="store_true", dest="through_api",
                        help="the service's clients fetch from the API's route (uvicorn) instead of the download "
                             "listener")
    parser.add_argument("--py-spy", metavar="FILE", dest="py_spy",
                        help="sample the service through its first phase with py-spy (PATH or $PY_SPY), the thread "
                             "holding the GIL; collapsed stacks to FILE and a summary printed")
    add_run_options(parser, settle=20.0, keep=False)
    cfg = parser.parse_args(argv)
    if not Path(NGINX).exists():
        print("nginx not found: install Debian's nginx (apt-get install nginx-light)", file=sys.stderr)
        return 2
    from tests.support.ports import free_port, wait_for_port

    command = command_line("bench.download_rate", argv, py_spy=bool(cfg.py_spy))
    info = machine()
    with tempfile.TemporaryDirectory(prefix="loa-bench-download-") as tmp:
        workdir = Path(tmp)
        setup = prepare(workdir, cfg.receivers)
        print(f"release {setup['release_id']}: {len(setup['paths'])} files, {setup['bundle_bytes']:,} bytes; "
              f"{cfg.receivers} receivers offered it", flush=True)
        api_port, download_port, nginx_port = free_port(), free_port(), free_port()
        api = start_api(workdir, setup["registry"].path, api_port, download_port)
        nginx = start_nginx(workdir, nginx_port)
        service_port = api_port if cfg.through_api else download_port
        phases: list[dict[str, Any]] = []
        try:
            wait_for_port(api_port, timeout=60)
            wait_for_port(download_port, timeout=30)
            wait_for_port(nginx_port, timeout=30)
            for number in range(1, cfg.repeat + 1):
                for kind, port, base, pid in ((NGINX_KIND, nginx_port, "/release", nginx.pid),
                                              (SERVICE, service_port,
                                               f"/api/v1/firmware/download/{setup['release_id']}", api.pid)):
                    wait_idle(cfg.settle, f"{kind} {number}")
                    spy = None
                    if cfg.py_spy and kind == SERVICE and number == 1:
                        spy = attach_py_spy(pid, str(Path(cfg.py_spy).resolve()), rate=250, gil=True,
                                            duration_s=cfg.seconds + 2)
                    phase = run_phase(kind, port, base, setup, cfg, pid)
                    wait_py_spy(spy)
                    phase["round"] = number
                    phases.append(phase)
                    print(f"round {number} {kind}: {phase['rate'] / 1e6:.1f} MB/s, "
                          f"{phase['requests'] / phase['seconds']:.0f} requests/s; cores {phase['cores']}", flush=True)
        finally:
            api.terminate()
            nginx.terminate()
            api.wait(10)
            nginx.wait(10)
        counted = served_by_service(setup["registry"].path, setup["release_id"])
    got = {}
    for phase in phases:
        if phase["kind"] == SERVICE:
            for rid, n in phase["per_receiver"].items():
                got[rid] = got.get(rid, 0) + n
    service_rates = [p["rate"] for p in phases if p["kind"] == SERVICE]
    nginx_rates = [p["rate"] for p in phases if p["kind"] == NGINX_KIND]
    service_requests = [p["requests"] / p["seconds"] for p in phases if p["kind"] == SERVICE]
    nginx_requests = [p["requests"] / p["seconds"] for p in phases if p["kind"] == NGINX_KIND]
    ratio = statistics.median(service_rates) / statistics.median(nginx_rates)
    rows = ["| round | server | MB/s | requests/s | server CPU µs/request | cores: server / clients / other |",
            "|---|---|---:|---:|---:|---|"]
    for p in phases:
        c = p["cores"]
        per_second = p["requests"] / p["seconds"]
        rows.append(f"| {p['round']} | {p['kind']} | {p['rate'] / 1e6:.1f} | {per_second:.0f} | "
                    f"{1e6 * c.get('server', 0) / per_second:.0f} | "
                    f"{c.get('server', 0):.2f} / {c.get('clients', 0):.2f} / {c.get('other', 0):.2f} |")
    results_section(
        "firmware download endpoint vs nginx", "download_rate.py", command,
        [machine_line(info, mosquitto=False, source=True),
         f"- release: a bundle built from firmware/ and signed, {len(setup['paths'])} files, "
         f"{setup['bundle_bytes']:,} bytes, stored by the release service; {cfg.receivers} receivers offered it",
         f"- servers on 127.0.0.1: {served_by(cfg.through_api)} (one API process, SQLite, "
         "each request signed in with the receiver's own login, checked against its rollout, counted), "
         f"nginx {_nginx_version()} (sendfile, one worker) over the same files",
         f"- load: {cfg.clients} client processes, each whole release per receiver on one kept-alive connection, "
         f"every {cfg.resume_every}th file in two Range requests; {cfg.seconds:g} s per phase, alternating, "
         f"{cfg.repeat} rounds"],
        [f"- nginx: median **{statistics.median(nginx_rates) / 1e6:.1f} MB/s**, "
         f"{statistics.median(nginx_requests):.0f} requests/s",
         f"- service: median **{statistics.median(service_rates) / 1e6:.1f} MB/s**, "
         f"{statistics.median(service_requests):.0f} requests/s",
         f"- ratio: **{ratio:.2f}×** — {'meets' if ratio >= 0.5 else 'below'} the goal of ≥ 0.5×",
         f"- bytes the service counted per receiver equal what its clients received: "
         f"{'yes' if counted == got else 'NO'} ({len(counted)} receivers, {sum(counted.values()):,} bytes)"],
        "\n".join(rows),
        append=cfg.append)
    if cfg.py_spy and Path(cfg.py_spy).exists():
        print(spy_summary(cfg.py_spy), flush=True)
    return 0


def _nginx_version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().rsplit("/", 1)[-1]


if __name__ == "__main__":
    raise SystemExit(main())
