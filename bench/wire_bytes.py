"""Bytes on the wire: what one receiver's MQTT connection costs in 4G data per day and month.

The real firmware runs on MicroPython (unix port, 160 KiB heap, simulated board) against
Mosquitto in its production configuration with its TLS listener (a throwaway CA and server
certificate made with openssl at run time), through a counting TCP relay
(tests/support/tcp_relay.py). The relay counts TCP payload bytes both ways.

The application slot is compiled to .mpy with mpy-cross, as a release ships it
(tests/firmware/conftest.py: Device).

Method: the receiver connects (TCP + TLS handshake with the CA checked, CONNECT, birth,
subscriptions, boot event, play status, first telemetry); that is the cost of one connection.
Then it runs at the default telemetry interval and keepalive for ``--minutes``; the
steady-state rate (telemetry, PINGREQ/PINGRESP, TLS records around them) is scaled to a day.
A planned stop (goodbye, DISCONNECT, TLS close) is measured last. A day is the steady rate
x 86,400 s plus one reconnect (a new connection and the end of the old one: 4G operators and
NAT gateways drop idle or long-lived connections about daily). IP and TCP headers are not
payload: they are estimated as 52 bytes (IPv4 20 + TCP 20 + timestamps 12) per relayed
segment plus one ACK for each, and 7 packets of handshake and close per connection.

    python -m bench.wire_bytes                     # 60 minutes at the firmware's defaults
    python -m bench.wire_bytes --minutes 20 --keepalive 60 --interval 60
"""

from __future__ import annotations

import argparse
import ast
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness import machine, machine_line
from tests.firmware.conftest import Device, wait_for
from tests.support.mosquitto_production import production_mosquitto
from tests.support.ports import free_port
from tests.support.tcp_relay import Counts, TcpRelay

GOAL_MB_PER_MONTH = 10.0
DAYS_PER_MONTH = 30
# IPv4 (20) + TCP (20) + the timestamps option (12) Linux sends on every segment.
HEADER_BYTES = 52
# SYN, SYN-ACK, ACK, and FIN/ACK both ways.
CONNECTION_PACKETS = 7
# After the birth: subscriptions, the boot event, the play status and the first telemetry
# go out within this long.
SETTLE_S = 5.0
RID = "rx-wire-bytes"


def _delta(a: Counts, b: Counts) -> Counts:
    return Counts(*(getattr(b, f) - getattr(a, f) for f in ("bytes_up", "bytes_down", "writes_up", "writes_down")))


def _ip_bytes(c: Counts, connections: int = 0) -> int:
    """Payload plus the estimated IP/TCP headers: each segment and its ACK, and handshakes."""
    return (c.bytes_up + c.bytes_down + 2 * HEADER_BYTES * (c.writes_up + c.writes_down)
            + connections * CONNECTION_PACKETS * HEADER_BYTES)


def firmware_defaults() -> dict[str, object]:
    """The firmware's DEFAULTS, read from its source (it is MicroPython, not imported here)."""
    tree = ast.parse((Path(__file__).resolve().parent.parent / "firmware/loa/config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DEFAULTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("DEFAULTS not found in firmware/loa/config.py")


def measure(minutes: float, keepalive: int, interval: float, heapsize: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="loa-wire-") as tmp, \
            production_mosquitto(Path(tmp), tls=True) as broker, \
            TcpRelay(broker.tls_port or 0) as relay:
        password = secrets.token_urlsafe(16)
        broker.accounts.add_receiver(RID, password)
        config = {
            "id": RID, "password": password, "host": "127.0.0.1", "port": relay.port, "tls": True,
            "ca": "ca.crt", "server_name": "localhost", "link": "host",
            "keepalive": keepalive, "telemetry_interval": interval,
            # Loopback only: the clock sync goes to a port where nothing answers (it is UDP
            # outside the MQTT connection anyway).
            "ntp": "127.0.0.1", "ntp_port": free_port(),
        }
        device = Device(Path(tmp) / "flash", config)  # the slot compiled to .mpy, as a release ships it
        assert broker.ca_file is not None
        shutil.copy(broker.ca_file, device.root / "ca.crt")
        try:
            device.start(heapsize)
            try:
                wait_for(lambda: "app: online" in device.output, 60, "the birth")
            except AssertionError:
                raise SystemExit("the receiver did not come online:\n" + device.output) from None
            time.sleep(SETTLE_S)
            connected = relay.counts()
            start = time.monotonic()
            time.sleep(minutes * 60)
            steady = _delta(connected, relay.counts())
            seconds = time.monotonic() - start
            before_stop = relay.counts()
            code = device.stop(30)
            ended = _delta(before_stop, relay.counts())
        finally:
            device.close()
        if code != 0 or relay.connections != 1:
            raise SystemExit(f"the receiver exited with {code} after {relay.connections} connection(s):\n{device.output}")
    day_steady = (_ip_bytes(steady)) * 86400 / seconds
    reconnect = _ip_bytes(connected, 1) + _ip_bytes(ended)
    day = day_steady + reconnect
    return {
        "connect": connected, "steady": steady, "steady_s": seconds, "stop": ended,
        "day_payload": (steady.bytes_up + steady.bytes_down) * 86400 / seconds
        + connected.bytes_up + connected.bytes_down + ended.bytes_up + ended.bytes_down,
        "day": day, "month_mb": day * DAYS_PER_MONTH / 1e6,
        "telemetry_per_day": 86400 / interval,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = firmware_defaults()
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="steady-state window (default 60: whole cycles of reports and pings at the defaults)")
    parser.add_argument("--keepalive", type=int, default=int(defaults["keepalive"]),  # type: ignore[call-overload]
                        help=f"MQTT keepalive, s (the firmware's default, {defaults['keepalive']})")
    parser.add_argument("--interval", type=float, default=float(defaults["telemetry_interval"]),  # type: ignore[arg-type]
                        help=f"telemetry interval, s (the firmware's default, {defaults['telemetry_interval']})")
    parser.add_argument("--heapsize", default="160k", help="MicroPython heap (default 160k, the firmware's budget)")
    args = parser.parse_args()
    r = measure(args.minutes, args.keepalive, args.interval, args.heapsize)
    c, s, e = r["connect"], r["steady"], r["stop"]
    assert isinstance(c, Counts) and isinstance(s, Counts) and isinstance(e, Counts)
    per_min = 60 / float(r["steady_s"])  # type: ignore[arg-type]
    print(machine_line(machine(libraries=())).removeprefix("- "))
    print(f"settings: heap {args.heapsize}, keepalive {args.keepalive} s, telemetry every {args.interval:g} s, TLS on, steady window {float(r['steady_s']):.0f} s")  # type: ignore[arg-type]
    print(f"connection (TCP payload): up {c.bytes_up} B, down {c.bytes_down} B in {c.writes_up}+{c.writes_down} segments")
    print(f"steady: up {s.bytes_up * per_min:.0f} B/min, down {s.bytes_down * per_min:.0f} B/min "
          f"({s.writes_up}+{s.writes_down} segments in the window)")
    print(f"planned stop: up {e.bytes_up} B, down {e.bytes_down} B")
    print(f"per day: payload {float(r['day_payload']) / 1e3:.1f} kB; with estimated IP/TCP headers {float(r['day']) / 1e3:.1f} kB")  # type: ignore[arg-type]
    print(f"per month ({DAYS_PER_MONTH} days): {float(r['month_mb']):.2f} MB with headers; goal <= {GOAL_MB_PER_MONTH:g} MB")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
