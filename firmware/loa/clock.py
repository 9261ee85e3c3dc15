# The receiver's wall clock. An ESP32's RTC starts at its epoch after power-on and drifts; the
# schedule and command expiry need real time. So the clock is synced by SNTP (RFC 4330) or,
# failing that, the modem's network time, and from then on runs as the reference time taken
# at the sync plus the board's never-wrapping uptime. Nothing here sets the board's RTC: the
# correction lives in this layer (the unix port cannot set the host's clock either).

import errno
import random
import socket

import asyncio
from micropython import const

# Seconds from the NTP era (1900) to the Unix epoch (1970).
NTP_TO_UNIX = const(2208988800)
# One SNTP request waits this long for its answer (a 4G round trip is 50-500 ms).
SNTP_WAIT_MS = const(2000)
# Requests per sync before falling back to the modem's time.
SNTP_TRIES = const(3)
# How often a waiting request looks for its answer; half of it is the worst added error.
POLL_MS = const(4)
# Skews beyond the 32-bit range of the telemetry field are reported at its bound.
SKEW_LIMIT = 0x7FFFFFFF


def _ntp_ms(data, pos):
    """Unix milliseconds of the 64-bit NTP timestamp at ``data[pos:pos+8]``."""
    seconds = int.from_bytes(data[pos:pos + 4], "big")
    if seconds < 0x80000000:
        seconds += 0x100000000  # RFC 4330 section 3: era 1, from 2036-02-07
    fraction = int.from_bytes(data[pos + 4:pos + 8], "big")
    return (seconds - NTP_TO_UNIX) * 1000 + (fraction * 1000 >> 32)


class Clock:
    def __init__(self, board):
        self.board = board
        self.synced_up_ms = None   # uptime of the last sync; None: never synced since boot
        self.base_ms = 0           # reference Unix time (ms) at synced_up_ms
        self.skew_ms = None        # this clock minus the reference at the last sync
        self.source = None         # "ntp" or "modem"

    @property
    def synced(self):
        return self.synced_up_ms is not None

    def unix_ms(self):
        if self.synced_up_ms is None:
            board = self.board
            fine = getattr(board, "unix_time_ms", None)
            return fine() if fine is not None else board.unix_time() * 1000
        return self.base_ms + self.board.uptime_ms() - self.synced_up_ms

    def unix_time(self):
        return self.unix_ms() // 1000

    def since_sync(self):
        """Whole seconds since the last sync, or None."""
        if self.synced_up_ms is None:
            return None
        return (self.board.uptime_ms() - self.synced_up_ms) // 1000

    def correct(self, local_ms, up_ms, reference_ms, source):
        """Set the clock from ``reference_ms``, the true time when this clock read
        ``local_ms`` at uptime ``up_ms``. Returns the skew found (ms)."""
        skew = max(-SKEW_LIMIT, min(SKEW_LIMIT, local_ms - reference_ms))
        self.base_ms = reference_ms
        self.synced_up_ms = up_ms
        self.skew_ms = skew
        self.source = source
        return skew

    async def sync_ntp(self, host, port=123):
        """Ask an SNTP server; set the clock from its answer. Returns the skew (ms); raises
        OSError if no valid answer came."""
        address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
        problem = "no answer"
        for _ in range(SNTP_TRIES):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(address)  # so that a refusal (ICMP) is seen at once
                answer = await self._exchange(sock)
            except OSError as exc:
                problem = repr(exc)
                continue
            finally:
                sock.close()
            if answer is not None:
                local_ms, up_ms, reference_ms = answer
                return self.correct(local_ms, up_ms, reference_ms, "ntp")
            problem = "no valid answer"
        raise OSError("sntp " + host + ": " + problem)

    async def _exchange(self, sock):
        """One request; (local ms, uptime ms, reference ms) at its answer, or None."""
        request = bytearray(48)
        request[0] = 0x23  # LI 0, version 4, mode 3 (client)
        # The transmit timestamp is a nonce: the server echoes it as "originate", which ties
        # the answer to this request (and keeps a wrong local clock out of the packet).
        nonce = random.getrandbits(32).to_bytes(4, "big") + random.getrandbits(32).to_bytes(4, "big")
        request[40:48] = nonce
        board = self.board
        t1 = self.unix_ms()
        up1 = board.uptime_ms()
        sock.send(request)
        while board.uptime_ms() - up1 < SNTP_WAIT_MS:
            try:
                data = sock.recv(64)
            except OSError as exc:
                if exc.args[0] != errno.EAGAIN:
                    raise
                await asyncio.sleep_ms(POLL_MS)
                continue
            up4 = board.uptime_ms()
            t4 = t1 + up4 - up1
            if (len(data) < 48 or data[0] & 0x07 != 4 or data[0] >> 6 == 3
                    or not 1 <= data[1] <= 15 or data[24:32] != nonce or not any(data[40:48])):
                # Not a server's answer to this request, an unsynchronized server, or a
                # kiss-o'-death (stratum 0): RFC 4330 section 5 says ignore it.
                continue
            t2 = _ntp_ms(data, 32)
            t3 = _ntp_ms(data, 40)
            offset = ((t2 - t1) + (t3 - t4)) // 2
            return t4, up4, t4 + offset
        return None

    def sync_modem(self):
        """Set the clock from the modem's network time (whole seconds), if the board has one.
        Returns the skew (ms) or None."""
        network_time = getattr(self.board, "network_time", None)
        reference = network_time() if network_time is not None else None
        if reference is None:
            return None
        return self.correct(self.unix_ms(), self.board.uptime_ms(), int(reference) * 1000, "modem")
