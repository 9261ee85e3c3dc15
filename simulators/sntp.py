"""A minimal SNTP server (RFC 4330) on a free 127.0.0.1 UDP port, in a thread: the clock
reference the simulator's firmware receivers sync against, and the conformance bench's (no
traffic leaves the machine). It serves the host's clock, so a receiver that syncs to it agrees
with the service's and the observer's clock."""

from __future__ import annotations

import socket
import struct
import threading
import time

# Seconds from the NTP era (1900) to the Unix epoch.
NTP_EPOCH_OFFSET = 2_208_988_800
_PACKET = struct.Struct("!BBBb II 4s QQQQ")


def _ntp_time(t: float) -> int:
    seconds = int(t) + NTP_EPOCH_OFFSET
    return (seconds << 32) | int((t % 1) * 2**32)


class SntpServer:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SntpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def __enter__(self) -> SntpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.time()
            if len(data) < 48 or data[0] & 7 != 3:  # client mode only
                continue
            self.requests += 1
            version = (data[0] >> 3) & 7 or 4
            client_transmit = data[40:48]
            reply = bytearray(_PACKET.pack(
                (version << 3) | 4, 1, data[2], -20, 0, 0, b"LOCL",
                _ntp_time(received), 0, _ntp_time(received), _ntp_time(time.time())))
            reply[24:32] = client_transmit  # originate = the client's transmit time
            self._sock.sendto(bytes(reply), peer)
