"""Where the service's memory goes: ``loa serve`` with tracemalloc, and a report of what grew.

``python -m bench.memtrace serve --port N`` is ``loa serve`` with, when ``LOA_BENCH_MEMTRACE``
names a directory, a SIGUSR1 handler that writes, into that directory, a tracemalloc snapshot
(``<label>.snapshot``) and the deep sizes of the service's per-receiver structures
(``<label>.json``), then ``<label>.done``. The label is read from ``label`` there. The first
signal starts tracemalloc (``LOA_BENCH_MEMTRACE_FRAMES`` frames, default 25) before its
snapshot: what is traced is what was allocated since that baseline (tracing from the start
makes importing the service minutes long).
The benchmarks run it through ``Memtrace`` (``bench.connections --memtrace``).

The structures are found from the ``Runtime`` object (gc): ingest, its tracker and schedules
sync, command delivery, the MQTT adapter and its paho client, telemetry; every container of
theirs (and of the objects they hold, three levels down) with at least MIN_ENTRIES entries is
measured with everything it alone reaches (``deep_size``), each object counted once, in that
order.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

ENV_DIR = "LOA_BENCH_MEMTRACE"
ENV_FRAMES = "LOA_BENCH_MEMTRACE_FRAMES"
# Containers with fewer entries are not per-receiver structures.
MIN_ENTRIES = 100
# How deep below the service's objects containers are looked for.
DEPTH = 3
# Lines of the tracemalloc diff reported.
TOP = 25


# --- in the service process -----------------------------------------------------------------

def _skip(obj: Any) -> bool:
    """Objects a deep size never goes into: code and types, and the machinery every object can
    reach (event loop, tasks, threads, sockets, database engines)."""
    import asyncio
    import threading
    import types

    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        types.FrameType, types.CodeType, types.CoroutineType, types.GeneratorType,
                        asyncio.AbstractEventLoop, asyncio.Future, threading.Thread)):
        return True
    module = type(obj).__module__ or ""
    return module.startswith(("sqlalchemy", "socket", "ssl", "asyncio", "threading", "logging", "concurrent"))


def deep_size(root: Any, seen: set[int]) -> tuple[int, int]:
    """(bytes, objects) of ``root`` and what it reaches, less what ``seen`` has (updated)."""
    total = count = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or _skip(obj):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        count += 1
        stack.extend(gc.get_referents(obj))
        if isinstance(obj, dict):  # a dict of exact-str keys does not show its keys to the gc
            stack.extend(obj.keys())
    return total, count


def _attributes(obj: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if hasattr(obj, "__dict__") and isinstance(vars(obj), dict):
        out += list(vars(obj).items())
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(obj, name) and name != "__dict__":
                out.append((name, getattr(obj, name)))
    return out


# The service's long-lived objects, looked for by class name (wherever the restructured code
# keeps them), in the order they claim what they share.
ROOT_CLASSES = ("IngestService", "ConnectivityTracker", "CommandDelivery", "ScheduleSync", "MqttAdapter",
                "TelemetryService", "TelemetryWriter", "TagCache", "OutboxDispatcher", "Client")


def _roots() -> list[tuple[str, Any]]:
    found: dict[str, list[Any]] = {}
    for obj in gc.get_objects():
        cls = type(obj)
        if cls.__name__ in ROOT_CLASSES and cls.__module__.startswith(("fleet_service", "paho")):
            found.setdefault(cls.__name__, []).append(obj)
    return [(name if len(found[name]) == 1 else f"{name}[{i}]", obj)
            for name in ROOT_CLASSES for i, obj in enumerate(found.get(name, ()))]


def _ours(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith(("fleet_service", "paho", "influxdb_client")) and not isinstance(obj, type)


def _parts(obj: Any) -> list[tuple[str, Any]]:
    """What an entry of a per-receiver map is made of, one level down: a tuple's items, an
    object's attributes, a pydantic model's field dict, set of fields set and values."""
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return [(f"[{i}]", item) for i, item in enumerate(obj)]
    if isinstance(obj, dict):
        return [(f"[{key!r}]", value) for key, value in obj.items()]
    if hasattr(type(obj), "__pydantic_fields__"):
        out: list[tuple[str, Any]] = [("(object)", obj)]
        out += [("__dict__ (table)", vars(obj)), ("__pydantic_fields_set__", obj.__pydantic_fields_set__)]
        out += [(f".{name}", value) for name, value in vars(obj).items()]
        return out
    return _attributes(obj)


def _deep_all(items: list[Any], seen: set[int]) -> int:
    return sum(deep_size(item, seen)[0] for item in items)


def _inside(entries: list[tuple[Any, Any]], seen: set[int], depth: int = 0) -> list[dict[str, Any]]:
    """Bytes of each part of the entries (keys, then the values' parts), each object once."""
    rows: list[dict[str, Any]] = []
    if depth == 0 and entries and entries[0][0] is not None:
        rows.append({"part": "key", "bytes": _deep_all([k for k, _ in entries], seen)})
    values = [v for _, v in entries]
    first = values[0] if values else None
    if first is None or isinstance(first, (int, float, str, bytes, bool)) or depth > 1:
        rows.append({"part": "value", "bytes": _deep_all(values, seen)})
        return rows
    fresh = {id(v): v for v in values if id(v) not in seen}
    own = sum(sys.getsizeof(v) for v in fresh.values())
    seen.update(fresh)
    rows.append({"part": type(first).__qualname__, "bytes": own})
    for name, _ in _parts(first):
        if name == "(object)":
            continue
        parts = [dict(_parts(v)).get(name) for v in values]
        if name == "__dict__ (table)":  # the table alone; its values are the fields below
            tables = {id(p): p for p in parts if id(p) not in seen}
            rows.append({"part": name, "bytes": sum(sys.getsizeof(p) for p in tables.values())})
            seen.update(tables)
        elif hasattr(type(parts[0]), "__pydantic_fields__") and depth == 0:
            for row in _inside([(None, p) for p in parts], seen, depth + 1):
                rows.append({"part": f"{name} → {row['part']}", "bytes": row["bytes"]})
        else:
            rows.append({"part": name, "bytes": _deep_all(parts, seen)})
    return rows


def structures() -> dict[str, Any]:
    """Deep sizes of the containers with ≥ MIN_ENTRIES entries below the service's objects."""
    roots = _roots()
    seen: set[int] = {id(obj) for _, obj in roots}
    found: list[tuple[str, Any]] = []
    queue: deque[tuple[str, Any, int]] = deque((name, obj, 0) for name, obj in roots)
    visited: set[int] = set()
    # Module-level caches of the service (e.g. protocol.topics' parsed topics).
    for name, module in sorted(sys.modules.items()):
        if name.startswith("fleet_service") and module is not None:
            for attr, value in vars(module).items():
                if not attr.startswith("__") and isinstance(value, (dict, set, list, deque)) \
                        and len(value) >= MIN_ENTRIES:
                    found.append((f"{name}.{attr}", value))
    while queue:
        path, obj, depth = queue.popleft()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        for name, value in _attributes(obj):
            where = f"{path}.{name}"
            if isinstance(value, (dict, set, frozenset, list, deque, tuple)) and len(value) >= MIN_ENTRIES:
                found.append((where, value))
            elif _ours(value) and depth < DEPTH:
                queue.append((where, value, depth + 1))
    out = []
    for where, value in found:
        sample = next(iter(value.values() if isinstance(value, dict) else value), None)
        # What one entry is made of, measured over all entries before the container claims them.
        entries = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        inside = _inside(entries, set(seen)) if len(value) >= 10 * MIN_ENTRIES else []
        size, objects = deep_size(value, seen)
        out.append({"path": where, "entries": len(value), "bytes": size, "objects": objects,
                    "type": type(value).__name__, "item": type(sample).__qualname__ if sample is not None else None,
                    "inside": inside})
    return {"structures": out, "tracemalloc": tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else None}


def pymalloc_stats() -> dict[str, int]:
    """Python's small-object allocator (sys._debugmallocstats, written to fd 2): bytes in
    blocks in use, in free blocks of its pools, and its arenas in all."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        label, _, value = line.partition("=")
        label = label.strip().lstrip("#").strip()
        number = value.strip().replace(",", "")
        if not number.isdigit():
            continue
        if label.startswith("bytes in allocated blocks"):
            found["used"] = int(number)
        elif "bytes/arena" in label:  # "N arenas * 1048576 bytes/arena"
            found["total"] = int(number)
    if "total" in found and "used" in found:
        found["free"] = found["total"] - found["used"]  # free blocks, empty pools, headers
    return found


def c_heap_stats() -> dict[str, int]:
    """Outside Python's allocator: what SQLite holds (sqlite3_memory_used: page caches,
    statements, all connections) and the C library's heap (glibc mallinfo2: in use, free)."""
    import ctypes
    import ctypes.util

    out: dict[str, int] = {}
    try:
        import _sqlite3

        library = ctypes.CDLL(_sqlite3.__file__)
        used = library.sqlite3_memory_used
        used.restype = ctypes.c_int64
        out["sqlite"] = int(used())
    except (ImportError, OSError, AttributeError):
        pass

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        out.update({"malloc_used": info.uordblks + info.hblkhd, "malloc_free": info.fordblks})
    except (OSError, AttributeError):
        pass
    return out


def _dump(_signum: int, _frame: Any) -> None:
    directory = Path(os.environ[ENV_DIR])
    label = (directory / "label").read_text().strip()
    started = time.monotonic()
    gc.collect()
    frames = int(os.environ.get(ENV_FRAMES, "25"))
    if frames and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    facts = structures()
    facts["pymalloc"] = pymalloc_stats()
    facts["c_heap"] = c_heap_stats()
    if frames:
        tracemalloc.take_snapshot().dump(str(directory / f"{label}.snapshot"))
    facts["seconds"] = time.monotonic() - started
    (directory / f"{label}.json").write_text(json.dumps(facts))
    (directory / f"{label}.done").touch()


def serve() -> None:
    """``loa serve`` (the arguments after ``serve``), traced when LOA_BENCH_MEMTRACE is set."""
    if os.environ.get(ENV_DIR):
        signal.signal(signal.SIGUSR1, _dump)
    from fleet_service.cli import app

    app()


# --- in the benchmark -----------------------------------------------------------------------

class Memtrace:
    """Drives a service started with ``python -m bench.memtrace``: ``env`` goes into its
    environment; ``take(pid, label)`` has it write a snapshot and its structures."""

    def __init__(self, directory: Path, frames: int = 25) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.env = {ENV_DIR: str(directory), ENV_FRAMES: str(frames)}

    def take(self, pid: int, label: str, timeout: float = 600.0) -> dict[str, Any]:
        (self.directory / "label").write_text(label)
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not (self.directory / f"{label}.done").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no memory snapshot '{label}' from the service")
            time.sleep(0.2)
        return json.loads((self.directory / f"{label}.json").read_text())

    def report(self, before: dict[str, Any], after: dict[str, Any], receivers: int,
               rss_kib: tuple[int, int]) -> list[str]:
        """Markdown lines: tracemalloc's growth against RSS's, the structures per receiver, and
        the allocation sites that grew most (tracemalloc, grouped by the deepest frame of the
        service or of a library it calls)."""
        n = max(1, receivers)
        rss = (rss_kib[1] - rss_kib[0]) * 1024
        traced = [f["tracemalloc"][0] if f.get("tracemalloc") else None for f in (before, after)]
        lines = [f"Service memory, {receivers:,} receivers (bytes per receiver; `--memtrace`"
                 + (", tracemalloc on: the process is slower and larger than without it, the per-receiver "
                    "figures of its structures are not):" if traced[1] is not None else ", structures only):"), ""]
        if traced[0] is not None and traced[1] is not None:
            lines.append(f"- RSS growth {rss / n:,.0f} B/receiver (tracemalloc's own traces included); Python "
                         f"allocations that grew (tracemalloc) {(traced[1] - traced[0]) / n:,.0f} B/receiver")
        else:
            lines.append(f"- RSS growth {rss / n:,.0f} B/receiver; the structures below hold "
                         f"{sum(s['bytes'] for s in after['structures']) / n:,.0f} B/receiver, the rest is "
                         "what the table does not reach: transient objects (paho's messages, SQLAlchemy's "
                         "sessions), memory outside Python's allocator (SQLite's page cache, the C library's "
                         "heap) and pages pymalloc holds but does not use")
        pm = [f.get("pymalloc", {}) for f in (before, after)]
        if pm[0].get("total") and pm[1].get("total"):
            lines.append(f"- Python's small-object allocator (pymalloc, objects up to 512 B): its arenas grew "
                         f"{(pm[1]['total'] - pm[0]['total']) / n:,.0f} B/receiver, of which blocks in use "
                         f"{(pm[1].get('used', 0) - pm[0].get('used', 0)) / n:,.0f} and free blocks "
                         f"{(pm[1].get('free', 0) - pm[0].get('free', 0)) / n:,.0f}; the rest of the RSS growth "
                         f"({(rss - pm[1]['total'] + pm[0]['total']) / n:,.0f} B/receiver) is larger blocks from the "
                         "C allocator: big objects (dict tables, sets of more than ~20 entries), SQLite's page "
                         "cache, buffers")
        ch = [f.get("c_heap", {}) for f in (before, after)]
        if "malloc_used" in ch[0] and "malloc_used" in ch[1]:
            grew = {k: (ch[1].get(k, 0) - ch[0].get(k, 0)) / n for k in ("sqlite", "malloc_used", "malloc_free")}
            lines.append(f"- the C library's heap (glibc mallinfo2: blocks over 512 B and C libraries; pymalloc maps its arenas itself): in use grew "
                         f"{grew['malloc_used']:,.0f} B/receiver, free but kept {grew['malloc_free']:,.0f}; of what is "
                         f"in use, SQLite's own (sqlite3_memory_used: page caches, statements) "
                         f"{grew['sqlite']:,.0f} B/receiver" if "sqlite" in ch[1] else "")
        lines += ["", "| structure (deep size: what it alone holds) | entries | item | after: B per receiver | "
                  "before: B per receiver |", "|---|---:|---|---:|---:|"]
        old = {s["path"]: s for s in before["structures"]}
        rows = sorted(after["structures"], key=lambda s: -s["bytes"])
        for s in rows:
            b = old.get(s["path"])
            lines.append(f"| `{s['path']}` | {s['entries']:,} | {s['item'] or '—'} | {s['bytes'] / n:,.0f} | "
                         f"{b['bytes'] / n if b else 0:,.0f} |")
        lines.append(f"| all of the above | | | **{sum(s['bytes'] for s in rows) / n:,.0f}** | "
                     f"{sum(s['bytes'] for s in before['structures']) / n:,.0f} |")
        for s in rows:
            if s.get("inside") and s["bytes"] >= 100 * n:
                lines += ["", f"Inside `{s['path']}` ({s['item']}; bytes per receiver, each object counted once "
                          "in this order):", "", "| part | B per receiver |", "|---|---:|"]
                lines += [f"| {r['part']} | {r['bytes'] / n:,.0f} |" for r in s["inside"] if r["bytes"] >= n]
        a, b = self.directory / "after.snapshot", self.directory / "before.snapshot"
        if a.exists() and b.exists():
            lines += ["", f"Allocation sites that grew most (tracemalloc, top {TOP}, by the deepest frame in "
                      "fleet_service, else the deepest in a library other than the standard one):", "",
                      "| B per receiver | blocks per receiver | where (what allocated) |", "|---:|---:|---|"]
            for size, blocks, where in site_growth(b, a)[:TOP]:
                lines.append(f"| {size / n:,.0f} | {blocks / n:,.2f} | {where} |")
        return lines


def _site(trace: Any) -> str:
    """The most telling frame of an allocation: the deepest in fleet_service, else the deepest
    outside the standard library, else the deepest, with the frame that allocated."""
    frames = list(reversed(trace))  # tracemalloc keeps the oldest first
    ours = [f for f in frames if "/fleet_service/" in f.filename and not f.filename.endswith("/cli.py")]
    libraries = [f for f in frames if "site-packages" in f.filename]
    pick = (ours or libraries or frames)[0]
    short = pick.filename.split("site-packages/")[-1].split("/work/main/")[-1]
    top = frames[0]
    where = f"`{short}:{pick.lineno}`"
    if top is not pick:
        where += f" ({top.filename.rsplit('/', 1)[-1]}:{top.lineno})"
    return where


def site_growth(before: Path, after: Path) -> list[tuple[int, int, str]]:
    """(bytes, blocks, site) that grew from ``before`` to ``after``, most first."""
    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    grown: dict[str, list[int]] = {}
    for stat in new.compare_to(old, "traceback"):
        if stat.size_diff <= 0:
            continue
        entry = grown.setdefault(_site(stat.traceback), [0, 0])
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
    return sorted(((s, c, w) for w, (s, c) in grown.items()), reverse=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve()
        return
    raise SystemExit("usage: python -m bench.memtrace serve [loa serve options]  (see bench/README.md)")


if __name__ == "__main__":
    main()
