# The audio stream player: an MP3 stream over HTTP(S) -> a ring buffer -> the board's decoder.
#
# A stream is an Icecast/Shoutcast-style endless MP3 or a plain MP3 file, over HTTP/1.0 or
# 1.1 (chunked or not), behind up to MAX_REDIRECTS redirects. One task reads the network into
# a preallocated ring buffer; another feeds the decoder from it as fast as the decoder takes
# it, so the decoder paces playback. The ring rides out the gaps of a 4G link; when it runs
# dry mid-stream that is an underrun, and the player is "buffering" until it has refilled.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

# Ring buffer between network and decoder, allocated once when the player is made (at
# start-up, while the heap is in one piece) and reused by every stream. 8 KiB is 2 s of the
# 32 kbps mono MP3 that commune programmes mostly are, 1 s at 64 kbps, 0.5 s at 128 kbps;
# the VS1053 holds another 2 KiB in its own FIFO. A live stream keeps the ring full (the
# server's burst on connect fills it, then it is paced at its bitrate), so that much of a 4G
# stall passes unheard; a longer one is an underrun, and playback resumes once PREBUFFER_BYTES
# are back. Twice this would ride out twice the stall, but the heap cannot spare it beside the
# MQTT session and the decoding of the largest command (docs/firmware.md, "Memory").
RING_BYTES = const(8192)
# Held before playback starts, and before it resumes after an underrun (0.5 s at 64 kbps): a
# quick start matters more than avoiding a second underrun.
PREBUFFER_BYTES = const(4096)
# Largest single socket read, so that the feeder keeps turning while a burst arrives.
READ_BYTES = const(2048)
# How long the feeder sleeps when the decoder is full or the ring is empty: well inside the
# VS1053's 2 KiB FIFO (128 ms of audio at 128 kbps).
FEED_MS = const(20)
# A stream that delivers nothing for this long is dead (a 4G link gone silent).
STALL_MS = const(15000)
# Icecast relays and CDNs use one or two redirects; more is a loop.
MAX_REDIRECTS = const(3)
# Response header lines longer than this are cut; more lines than this: not a stream server.
MAX_HEADER_LINE = const(512)
MAX_HEADERS = const(64)
USER_AGENT = "loa-receiver"

# MPEG audio Layer III bitrates (kbps) by bitrate index 1..14: MPEG-1 (ISO 11172-3), then
# MPEG-2 and 2.5 (ISO 13818-3); sample rates by version bits and rate index.
_KBPS_V1 = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_KBPS_V2 = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class PlayerError(Exception):
    """``reason``: "stream_unreachable" (no connection, or not a 2xx answer) or
    "stream_error" (connected, but no audio came)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason


def mp3_frame(b0, b1, b2):
    """(kbps, frame length in bytes) of an MPEG Layer III frame header, or None."""
    if b0 != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version = (b1 >> 3) & 3
    if version == 1 or (b1 >> 1) & 3 != 1:  # reserved version, or not Layer III
        return None
    index = b2 >> 4
    rate_index = (b2 >> 2) & 3
    if index == 0 or index == 15 or rate_index == 3:
        return None
    kbps = (_KBPS_V1 if version == 3 else _KBPS_V2)[index - 1]
    rate = _RATES[version][rate_index]
    length = (144 if version == 3 else 72) * kbps * 1000 // rate + ((b2 >> 1) & 1)
    return kbps, length


def stream_kbps(buf, n):
    """The bitrate of the first frame in ``buf[:n]`` whose successor starts where its length
    says (two headers in a row: a lone 0xFFE pattern in audio data is not a frame)."""
    for i in range(n - 3):
        if buf[i] != 0xFF:
            continue
        frame = mp3_frame(buf[i], buf[i + 1], buf[i + 2])
        if frame is None:
            continue
        j = i + frame[1]
        if j + 3 <= n and mp3_frame(buf[j], buf[j + 1], buf[j + 2]) is not None:
            return frame[0]
    return None


def split_url(url):
    """(https?, host, port, path) of an http:// or https:// URL; ValueError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError("not an http(s) URL")
    hostport, slash, path = rest.partition("/")
    tls = scheme == "https"
    port = 443 if tls else 80
    colon = hostport.find(":")
    host = hostport
    if colon >= 0:
        host = hostport[:colon]
        port = int(hostport[colon + 1:])
    if not host:
        raise ValueError("no host")
    return tls, host, port, "/" + path


def _no_end(why):
    pass


class Player:
    def __init__(self, board, log=print):
        self.board = board
        self.log = log
        self.state = "idle"
        self.url = None
        self.kbps = None
        self.underruns = 0
        self.bytes = 0
        self.on_end = _no_end  # the application's callback(why)
        self._ring = bytearray(RING_BYTES)
        self._mv = memoryview(self._ring)
        self._start = 0      # ring position of the next byte for the decoder
        self._held = 0       # bytes in the ring
        self._done = None    # why the network side ended: None while it runs
        self._heard = 0      # ticks_ms of the last bytes received
        self._stream = None
        self._ssl = None     # the TLS context for https streams, made at the first
        self._receiver = None
        self._feeder = None
        self._settled = asyncio.Event()

    # -- control ---------------------------------------------------------------------------

    def lend_ring(self, n):
        """The ring's first ``n`` bytes (a memoryview; at most RING_BYTES), for a caller that
        uses them only while nothing plays and gives them back before it next awaits: an
        update's signature check holds the manifest in them (loa/update.py) rather than in a
        block of the heap that size."""
        if self._stream is not None or self._feeder is not None:
            raise OSError("the ring is in use")
        return self._mv[:n]

    async def play(self, url, timeout_s=15):
        """Stop whatever plays, connect to ``url`` and return once audio flows to the
        decoder. Raises PlayerError."""
        await self.stop()
        deadline = ticks_add(ticks_ms(), int(timeout_s * 1000))
        self.url = url
        self.state = "connecting"
        try:
            stream, writer, chunked, length, icy_kbps = await asyncio.wait_for_ms(self._open(url), int(timeout_s * 1000))
        except asyncio.TimeoutError:
            self._failed()
            raise PlayerError("stream_unreachable", "no answer in " + str(timeout_s) + " s")
        except PlayerError:
            self._failed()
            raise
        except (OSError, ValueError) as exc:
            self._failed()
            raise PlayerError("stream_unreachable", repr(exc))
        self._stream = writer
        self._start = self._held = 0
        self._done = None
        self._heard = ticks_ms()
        self.kbps = icy_kbps
        self._settled.clear()
        self._receiver = asyncio.create_task(self._receive(stream, chunked, length))
        self._feeder = asyncio.create_task(self._feed())
        try:
            await asyncio.wait_for_ms(self._settled.wait(), max(1, ticks_diff(deadline, ticks_ms())))
        except asyncio.TimeoutError:
            await self.stop()
            self.state = "error"
            raise PlayerError("stream_error", "no audio in " + str(timeout_s) + " s")
        if self.state not in ("playing", "buffering"):
            raise PlayerError("stream_error", "the stream ended before playing")
        self.log("player: playing", url, self.kbps, "kbps")

    async def stop(self):
        """Stop streaming: state "idle", decoder closed, amplifier off."""
        tasks = (self._feeder, self._receiver)
        self._feeder = self._receiver = None  # so that the feeder does not report an end
        for task in tasks:
            if task is not None:
                task.cancel()
                try:
                    await task
                except BaseException:  # CancelledError, or whatever ended it before
                    pass
        was = self.url
        self._release()
        self.state = "idle"
        self.url = None
        if was is not None:
            self.log("player: stopped")

    def _failed(self):
        self.state = "error"
        self.url = None

    def _release(self):
        if self._stream is not None:
            try:
                self._stream.close()
            except OSError:
                pass
            self._stream = None
        self.board.audio_close()
        self.board.set_amp(False)

    # -- HTTP ------------------------------------------------------------------------------

    async def _open(self, url):
        """Connect and read the response head, following redirects. Returns (reader, writer,
        chunked, content length or None, icy-br or None)."""
        for _ in range(MAX_REDIRECTS + 1):
            tls, host, port, path = split_url(url)
            if tls:
                # Public programme audio: the board carries no CA bundle for stream hosts. The
                # context is made once and kept (one block of about 3 KiB, see loa/app.py).
                if self._ssl is None:
                    self._ssl = self.board.ssl_context("", False)
                stream, writer = await asyncio.open_connection(host, port, ssl=self._ssl, server_hostname=host)
            else:
                stream, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                             + b"\r\nUser-Agent: " + USER_AGENT.encode()
                             + b"\r\nAccept: */*\r\nIcy-MetaData: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                status = (await stream.readline())[:MAX_HEADER_LINE].split(None, 2)
                # "HTTP/1.1 200 OK", or Shoutcast v1's "ICY 200 OK".
                if len(status) < 2 or not (status[0].startswith(b"HTTP/") or status[0] == b"ICY"):
                    raise PlayerError("stream_unreachable", "not an HTTP answer")
                code = int(status[1])
                headers = {}
                for _ in range(MAX_HEADERS + 1):
                    line = (await stream.readline())[:MAX_HEADER_LINE]
                    if not line:
                        raise PlayerError("stream_unreachable", "connection closed in the header")
                    line = line.strip()
                    if not line:
                        break
                    name, colon, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                else:
                    raise PlayerError("stream_unreachable", "too many header lines")
            except BaseException:
                writer.close()
                raise
            location = headers.get(b"location")
            if code in (301, 302, 303, 307, 308) and location:
                writer.close()
                target = location.decode()
                if target.startswith("/"):
                    target = ("https://" if tls else "http://") + host + ":" + str(port) + target
                url = target
                continue
            if not 200 <= code < 300:
                writer.close()
                raise PlayerError("stream_unreachable", "HTTP " + str(code))
            chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
            length = headers.get(b"content-length")
            icy = headers.get(b"icy-br", b"").split(b",")[0]  # some servers list several
            return (stream, writer, chunked, None if chunked or length is None else int(length),
                    int(icy) if icy.isdigit() else None)
        raise PlayerError("stream_unreachable", "more than " + str(MAX_REDIRECTS) + " redirects")

    # -- network -> ring ---------------------------------------------------------------------

    async def _fill(self, stream, limit):
        """Read up to ``limit`` bytes (None: until end of stream) into the ring; returns the
        number read (fewer than ``limit`` only at the end of the stream)."""
        got = 0
        while limit is None or got < limit:
            free = RING_BYTES - self._held
            if free == 0:
                await asyncio.sleep_ms(FEED_MS)
                continue
            end = (self._start + self._held) % RING_BYTES
            n = min(free, RING_BYTES - end, READ_BYTES)
            if limit is not None:
                n = min(n, limit - got)
            read = await stream.readinto(self._mv[end:end + n])
            if read is None:  # TLS: the socket was readable, but no whole record yet
                continue
            if read == 0:
                break
            self._held += read
            self.bytes += read
            self._heard = ticks_ms()
            got += read
        return got

    async def _receive(self, stream, chunked, length):
        why = "stream_error"
        try:
            if chunked:
                while True:
                    line = await stream.readline()
                    if not line:
                        break  # closed before the last chunk
                    size = int(line.split(b";")[0].strip().decode(), 16)
                    if size == 0:
                        why = "ended"
                        break
                    if await self._fill(stream, size) < size:
                        break
                    await stream.readline()  # the chunk's CRLF
            else:
                got = await self._fill(stream, length)
                if length is None or got == length:
                    why = "ended"
        except (OSError, ValueError) as exc:
            self.log("player: stream broke:", repr(exc))
        self._done = why

    # -- ring -> decoder ---------------------------------------------------------------------

    async def _refill(self):
        """Wait until the ring holds PREBUFFER_BYTES or the stream ended. False if nothing
        came for STALL_MS."""
        while self._held < PREBUFFER_BYTES and self._done is None:
            if ticks_diff(ticks_ms(), self._heard) > STALL_MS:
                return False
            await asyncio.sleep_ms(FEED_MS)
        return True

    async def _feed(self):
        board = self.board
        why = "stream_error"
        try:
            if not await self._refill():
                return
            # The frame headers tell the truth; icy-br is what the server was configured with.
            self.kbps = stream_kbps(self._ring, min(self._held, RING_BYTES - self._start)) or self.kbps
            board.set_amp(True)
            board.audio_open(self.kbps)
            while True:
                if self._held == 0:
                    if self._done is not None:
                        why = self._done
                        return
                    if self.state == "playing":
                        self.underruns += 1
                        self.state = "buffering"
                        self.log("player: underrun", self.underruns)
                    if not await self._refill():
                        return
                    continue
                n = min(self._held, RING_BYTES - self._start)
                took = board.audio_write(self._mv[self._start:self._start + n], n)
                if took:
                    self._start = (self._start + took) % RING_BYTES
                    self._held -= took
                    if self.state != "playing":
                        self.state = "playing"
                        self._settled.set()
                    await asyncio.sleep_ms(0)
                else:
                    await asyncio.sleep_ms(FEED_MS)
        finally:
            if self._feeder is not None and self._feeder is asyncio.current_task():
                # Ended by itself (not stopped): clean up and tell the application.
                self._end(why)

    def _end(self, why):
        if self._receiver is not None:
            self._receiver.cancel()
        self._receiver = self._feeder = None
        self._release()
        self.state = "idle" if why == "ended" else "error"
        self.log("player:", why, self.url)
        self.url = None
        self._settled.set()
        if self.on_end is not None:
            try:
                self.on_end(why)
            except Exception as exc:  # the application's bug must not stop the player
                self.log("player: on_end failed:", repr(exc))
