# SNTP (RFC 4330) for the receiver's clock (loa/clock.py): a version 4 client request with a
# random transmit timestamp; the answer must echo it, be a server's, synchronized, stratum
# 1-15. Loaded for a sync (after every link-up, every 6 hours) and let go after it.

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


def _ntp_ms(data, pos):
    """Unix milliseconds of the 64-bit NTP timestamp at ``data[pos:pos+8]``."""
    seconds = int.from_bytes(data[pos:pos + 4], "big")
    if seconds < 0x80000000:
        seconds += 0x100000000  # RFC 4330 section 3: era 1, from 2036-02-07
    fraction = int.from_bytes(data[pos + 4:pos + 8], "big")
    return (seconds - NTP_TO_UNIX) * 1000 + (fraction * 1000 >> 32)


async def sync(clock, host, port=123):
    """Ask an SNTP server; set ``clock`` from its answer. Returns the skew (ms); raises
    OSError if no valid answer came."""
    address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    problem = "no answer"
    for _ in range(SNTP_TRIES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)  # so that a refusal (ICMP) is seen at once
            answer = await _exchange(clock, sock)
        except OSError as exc:
            problem = repr(exc)
            continue
        finally:
            sock.close()
        if answer is not None:
            local_ms, up_ms, reference_ms = answer
            return clock.correct(local_ms, up_ms, reference_ms, "ntp")
        problem = "no valid answer"
    raise OSError("sntp " + host + ": " + problem)


async def _exchange(clock, sock):
    """One request; (local ms, uptime ms, reference ms) at its answer, or None."""
    request = bytearray(48)
    request[0] = 0x23  # LI 0, version 4, mode 3 (client)
    # The transmit timestamp is a nonce: the server echoes it as "originate", which ties
    # the answer to this request (and keeps a wrong local clock out of the packet).
    nonce = random.getrandbits(32).to_bytes(4, "big") + random.getrandbits(32).to_bytes(4, "big")
    request[40:48] = nonce
    board = clock.board
    t1 = clock.unix_ms()
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
