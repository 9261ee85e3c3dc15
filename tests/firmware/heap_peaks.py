"""The firmware's heap in its worst case, for docs/firmware.md ("Memory"):

    python -m tests.firmware.heap_peaks                 # at the budget (160k)
    python -m tests.firmware.heap_peaks --heapsize 144k
    python -m tests.firmware.heap_peaks --smallest      # the smallest heap it still runs in
    python -m tests.firmware.heap_peaks --modem         # on the 4G link (loa/ppp.py, loa/modem.py)
    python -m tests.firmware.heap_peaks --update        # then a firmware update (protocol 1.2)
    python -m tests.firmware.heap_peaks --modem --ppp-drop  # then a PPP drop: the AT layer again

One receiver (the real firmware, compiled to .mpy, on the simulated board) against the
production Mosquitto over TLS with the broker's certificate checked, through the worst case
the tests know: the largest schedule the protocol allows arrives while connected, a stream
plays, a second schedule of that size arrives while it plays, the board's readings raise
amp_fault, low_supply and overheat, and the broker restarts twice so that the receiver
reconnects over TLS with all of it held. The heap is read on the console line "heap" (after a
collection) four times a second throughout: the largest ``used`` is the peak of what stays
reachable; garbage is collected when an allocation needs it, so the smallest heap the whole
sequence still runs in (``--smallest``, in steps of 4 KiB) is what it really needs, holes
included. The receiver runs on the host's network (the unix port has no modem): ``--modem`` gives
the simulated board a modem that answers as a registered one does and runs the receiver on the
``ppp`` link, so that its heap is counted as on the board: the link (loa/ppp.py) held, the modem's
AT layer (loa/modem.py) loaded for each link-up and let go after it. ``--update`` goes on with a
firmware update offered while the stream still plays (it waits), then the stream stopped: the
manifest's signature check and the download with the schedule held, until the receiver resets into
the new version; and that version's first run up to its confirmation.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from tests.firmware.conftest import HEAPSIZE, Device, Observer, device_config, give_modem
from tests.firmware.test_receiver import Service, acks, largest_schedule, play_status
from tests.support.mosquitto_production import production_mosquitto
from tests.support.stream_server import StreamServer

RID = "fw-heap"
SAMPLE_S = 0.25
GC_LINE = re.compile(r"GC: total: (\d+), used: (\d+), free: (\d+)")
FREE_RUN = re.compile(r"max free sz: (\d+)")
BLOCK = 32  # bytes in a GC block of the unix port (x86_64)


class Sampler:
    """Asks for the heap report every SAMPLE_S and marks where each phase begins."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.phases: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        process = self.device.process
        assert process is not None and process.stdin is not None
        while not self._stop.wait(SAMPLE_S):
            try:
                process.stdin.write("heap\n")
                process.stdin.flush()
            except (BrokenPipeError, ValueError):
                return

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def restart(self) -> None:
        """Go on sampling the device's process after it was started again."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def phase(self, name: str) -> None:
        self.phases.append((name, len(self.device.lines)))

    def report(self) -> list[tuple[str, dict[str, int]]]:
        """Per phase: the largest used, the smallest free and the smallest largest free block."""
        lines = self.device.lines
        bounds = [*self.phases, ("end", len(lines))]
        out = []
        for (name, start), (_, end) in zip(bounds, bounds[1:]):
            used, free, run = [], [], []
            total = 0
            for i in range(start, min(end, len(lines) - 1)):
                gc = GC_LINE.search(lines[i])
                blocks = FREE_RUN.search(lines[i + 1])
                if gc and blocks:
                    total = int(gc[1])
                    used.append(int(gc[2]))
                    free.append(int(gc[3]))
                    run.append(int(blocks[1]) * BLOCK)
            if used:
                out.append((name, {"samples": len(used), "total": total, "max_used": max(used), "min_free": min(free),
                                   "min_largest": min(run)}))
        return out


def signed_release(directory: Path) -> tuple[Path, str]:
    """Release 1.4.0 built from firmware/ and signed with a key made here: (bundle, public key)."""
    from fleet_service.firmware import bundle, keys
    from tests.firmware.test_update import HARDWARE, NEW, _source

    out = directory / "bundle"
    bundle.build(_source(directory / "src", NEW), out, hardware=HARDWARE, min_version="0.1.0")
    private, _, key = keys.generate(directory / "key")
    bundle.sign(out, private)
    return out, keys.public_base64(key)


def worst_case(heapsize: str, directory: Path, *, modem: bool = False, update: bool = False,
               ppp_drop: bool = False) -> tuple[bool, list[tuple[str, dict[str, int]]], str]:
    """Run the worst case at ``heapsize``: whether it all went through, the heap per phase, and
    the receiver's console output."""
    directory.mkdir(parents=True, exist_ok=True)
    with production_mosquitto(directory, tls=True) as broker, StreamServer(64) as stream:
        broker.accounts.add_receiver(RID, "pw-heap")
        assert broker.tls_port is not None and broker.ca_file is not None
        observer = Observer(broker.host, broker.port, broker.service_username, broker.service_password, RID).start()
        service = Service(broker, RID)
        cfg = device_config(broker, RID, "pw-heap", tls=True, port=broker.tls_port, ca="ca.crt",
                            server_name="localhost", ntp="", keepalive=30, ping_timeout=5)
        release = signed_release(directory / "release") if update else None
        if release is not None:
            cfg["release_key"] = release[1]
        device = Device(directory / "flash", cfg)
        shutil.copy(broker.ca_file, device.root / "ca.crt")
        if modem:  # on the 4G link, through a simulated modem (conftest.MODEM_MAIN)
            give_modem(device.root, cfg)
            (device.root / "config.json").write_text(json.dumps(cfg))
        sampler = Sampler(device)
        ok = False
        try:
            device.start(heapsize)
            sampler.start()
            sampler.phase("connecting over TLS, idle")
            observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1, timeout=20)
            observer.wait("telemetry", timeout=20)
            time.sleep(1)
            sampler.phase("the largest schedule arrives")
            command = largest_schedule(1, stream.url())
            service.raw(json.dumps(command).encode())
            assert acks(observer, command["id"])[0]["st"] == "done"
            time.sleep(1)
            sampler.phase("playing, the schedule held")
            service.send("play", "play-1", url=stream.url("/live.mp3?r=1"))
            assert [a["st"] for a in acks(observer, "play-1", 2)] == ["accepted", "done"]
            play_status(observer, lambda m: m.get("ref") == "play-1" and m["st"] == "playing")
            time.sleep(2)
            sampler.phase("a second largest schedule while playing")
            command = largest_schedule(2, stream.url())
            service.raw(json.dumps(command).encode())
            assert acks(observer, command["id"])[0]["st"] == "done"
            time.sleep(1)
            sampler.phase("board events while playing")
            (device.root / "sim.json").write_text(json.dumps({"vin": 10.5, "temp": 90.0, "amp_fault": True}))
            assert device.process is not None and device.process.stdin is not None
            device.process.stdin.write("sim\n")
            device.process.stdin.flush()
            for kind in ("low_supply", "overheat", "amp_fault"):
                observer.wait("event", lambda m, k=kind: m["kind"] == k, timeout=10)
            for session in (2, 3):
                sampler.phase(f"TLS reconnect {session - 1}, playing, the schedule held")
                broker.restart()
                # (A connect attempt refused while the broker restarts takes a session number too.)
                observer.wait("state", lambda m, s=session: m["state"] == "online" and m["session"] >= s, timeout=30)
                observer.wait("telemetry", lambda m, s=session: m["session"] >= s, timeout=10)
                time.sleep(1)
            if ppp_drop:  # the link-up after it loads the modem's AT layer again
                sampler.phase("a PPP drop, the link up again, playing")
                last = max(m["session"] for m in observer.find("state"))
                values = json.loads((device.root / "sim.json").read_text())
                (device.root / "sim.json").write_text(json.dumps({**values, "ppp_drop": True}))
                device.process.stdin.write("sim\n")
                device.process.stdin.flush()
                time.sleep(0.5)
                broker.restart()
                # Without heap for the AT layer the board resets (loa/ppp.py): a power-up again.
                deadline = time.monotonic() + 60
                while not observer.find("state", lambda m: m["state"] == "online" and m["session"] > last):
                    assert time.monotonic() < deadline, "not online again after the PPP drop"
                    if device.process.poll() is not None:
                        sampler.stop()
                        before = list(device.lines)
                        device.start(heapsize)
                        device.lines[:0] = before
                        sampler.restart()
                    time.sleep(0.25)
                observer.wait("telemetry", lambda m: m["session"] > last, timeout=10)
                time.sleep(1)
            if release is not None:
                run_update(device, sampler, service, observer, release[0], heapsize)
            sampler.phase("after")
            time.sleep(1)
            ok = not any(s in device.output for s in ("MemoryError", "no memory", "no_memory"))
        except AssertionError:
            ok = False
        finally:
            sampler.stop()
            device.close()
            service.close()
            observer.close()
        return ok, sampler.report(), device.output


def run_update(device: Device, sampler: Sampler, service: Service, observer: Observer, release: Path,
               heapsize: str) -> None:
    """The update steps of ``--update`` (see the module's docstring)."""
    from tests.support.release_server import ReleaseServer

    with ReleaseServer(release, {RID: "pw-heap"}, cut_every=20000) as server:
        sampler.phase("an update offered while playing (waits)")
        service.send("update", "up-heap", rel=1, ver="1.4.0", hw="esp32-a7670", url=server.url)
        time.sleep(3)
        sampler.phase("signature check, download (stopped, schedule held)")
        service.send("stop", "stop-1")
        # Each reset (into the new version, or to go on in a heap in one piece) is a power-up
        # again, until the new version has confirmed itself.
        for run in range(1, 7):
            assert device.wait(90) == 0, device.output
            sampler.stop()
            before = list(device.lines)
            device.start(heapsize)
            device.lines[:0] = before  # one console for every run, so that the phases stay where they are
            sampler.phase(f"after reset {run}")
            sampler.restart()
            try:
                observer.wait("update", lambda m: m["st"] == "confirmed", timeout=60)
                break
            except AssertionError:
                continue
        # Accepted beside the stream, once it stopped, or after a reset that made room for the
        # command's checks.
        assert acks(observer, "up-heap")[0]["st"] == "accepted"
        time.sleep(2)


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heapsize", default=HEAPSIZE, help=f"MicroPython heap (default {HEAPSIZE}, the budget)")
    parser.add_argument("--smallest", action="store_true",
                        help="find the smallest heap (in KiB, steps of 4) it runs in")
    parser.add_argument("--modem", action="store_true", help="on the ppp link, through a simulated modem")
    parser.add_argument("--update", action="store_true", help="then a firmware update, and the new version's first run")
    parser.add_argument("--ppp-drop", action="store_true",
                        help="with --modem: after the TLS reconnects, the PPP session drops and comes up again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loa-heap-") as tmp:
        if not args.smallest:
            ok, report, output = worst_case(args.heapsize, Path(tmp), modem=args.modem, update=args.update,
                                            ppp_drop=args.ppp_drop)
            print(f"heap {args.heapsize}: {'went through' if ok else 'FAILED'}")
            for name, h in report:
                print(f"  {name:45} used ≤ {kib(h['max_used'])}, free ≥ {kib(h['min_free'])}, "
                      f"largest free block ≥ {kib(h['min_largest'])} ({h['samples']} samples, heap {kib(h['total'])})")
            if args.update:  # what the update said on the console: its steps, the free heap at the check
                print("\n".join(line for line in output.splitlines() if line.startswith(("update:", "loa:"))))
            if not ok:
                print(output)
            return
        low, high = 96, int(args.heapsize.rstrip("k"))  # KiB: assumed failing, checked first
        ok, _, output = worst_case(f"{high}k", Path(tmp) / f"h{high}", modem=args.modem, update=args.update)
        print(f"heap {high}k: {'went through' if ok else 'failed'}", flush=True)
        if not ok:
            print(output)
            return
        while high - low > 4:
            mid = (low + high) // 2 // 4 * 4
            ok, _, _ = worst_case(f"{mid}k", Path(tmp) / f"h{mid}", modem=args.modem, update=args.update)
            print(f"heap {mid}k: {'went through' if ok else 'failed'}", flush=True)
            if ok:
                high = mid
            else:
                low = mid
        print(f"smallest heap it went through: {high}k")


if __name__ == "__main__":
    main()
