"""A real HTTP audio stream server: real MP3, paced at its bitrate, in a thread on a free
127.0.0.1 port. ``loa demo`` serves its test stream with it, and the tests their streams.

Paths:
  /live.mp3            endless, ICY-style (HTTP/1.0, no length, ``icy-br``), paced at the bitrate
  /short.mp3?seconds=N a plain HTTP/1.1 file of N seconds with Content-Length, paced
  /slow.mp3            endless, paced at half the bitrate (the listener underruns)
  anything else        404
Query options on those paths: ``chunked=1`` (HTTP/1.1 chunked transfer encoding),
``cut=1`` (close the connection halfway through a /short.mp3, before its announced end).
``/redirect?to=PATH`` answers 302 to PATH (e.g. ``/redirect?to=/live.mp3``).

The MP3 is a tone sequence encoded once per bitrate with ``lame`` (Debian package ``lame``,
which scripts/bootstrap installs) and cached in the temp directory. Without the Xing/Info frame
and without tags, the file is whole MPEG frames, so it loops frame-aligned. Where ``lame`` is
missing, the server sends silent MPEG frames written here instead: still a valid stream at the
asked bitrate, so the demo works on any machine.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# One second of audio sent at once on connect, like Icecast's burst-on-connect (smaller than
# its 64 KB default so tests see pacing from the first seconds).
BURST_SECONDS = 1.0
# Pacing step: small enough that a receiver sees a steady flow, large enough to stay cheap.
SEND_INTERVAL_S = 0.05
# Length of the looped programme: long enough not to be trivially repetitive, short to encode.
SOURCE_SECONDS = 8

_cache_lock = threading.Lock()


def _sample_rate(bitrate_kbps: int) -> int:
    # MPEG-1 Layer III (32/44.1/48 kHz) covers 32-320 kbps; MPEG-2 (16/22.05/24 kHz) 8-160.
    # Speech-band radio at <= 64 kbps is MPEG-2 at 22.05 kHz, as district streams usually are.
    return 44100 if bitrate_kbps > 64 else 22050 if bitrate_kbps >= 32 else 16000


# MPEG Layer III bitrate index by kbit/s: MPEG-1 (48 kHz) above 64 kbit/s, MPEG-2 (24 or 16 kHz)
# up to 64, as _sample_rate chooses. At these sample rates a frame is a whole number of bytes.
_MPEG1_INDEX = {32: 1, 40: 2, 48: 3, 56: 4, 64: 5, 80: 6, 96: 7, 112: 8, 128: 9, 160: 10, 192: 11, 224: 12,
                256: 13, 320: 14}
_MPEG2_INDEX = {8: 1, 16: 2, 24: 3, 32: 4, 40: 5, 48: 6, 56: 7, 64: 8, 80: 9, 96: 10, 112: 11, 128: 12, 144: 13,
                160: 14}


def silent_mp3(bitrate_kbps: int, seconds: float = SOURCE_SECONDS) -> bytes:
    """Mono MP3 frames of silence at ``bitrate_kbps``, without an encoder: a frame header, side
    information of zeros (no spectral data: silence), and zero padding to the frame's length."""
    if bitrate_kbps > 64:
        version, rate, rate_bits, side, index = 0b11, 48000, 0b01, 17, _MPEG1_INDEX[bitrate_kbps]
        frame, samples = 144 * bitrate_kbps * 1000 // rate, 1152
    else:
        rate, rate_bits = (24000, 0b01) if bitrate_kbps >= 32 else (16000, 0b10)
        version, side, index = 0b10, 9, _MPEG2_INDEX[bitrate_kbps]
        frame, samples = 72 * bitrate_kbps * 1000 // rate, 576
    # sync, version, layer III, no CRC | bitrate, sample rate, no padding | mono
    header = bytes((0xFF, 0xE0 | version << 3 | 0b01 << 1 | 1, index << 4 | rate_bits << 2, 0b11 << 6))
    one = header + bytes(frame - len(header))
    assert frame >= len(header) + side
    return one * max(1, round(seconds * rate / samples))


def mp3_audio(bitrate_kbps: int) -> bytes:
    """The looped programme: the LAME-encoded tones, or silent frames where LAME is missing."""
    if shutil.which("lame") is None:
        return silent_mp3(bitrate_kbps)
    return mp3_file(bitrate_kbps).read_bytes()


def mp3_file(bitrate_kbps: int) -> Path:
    """A CBR MP3 of SOURCE_SECONDS at ``bitrate_kbps``, encoded by LAME, cached by bitrate."""
    lame = shutil.which("lame")
    if lame is None:
        raise RuntimeError("the stream server needs LAME to encode its MP3: apt-get install lame")
    directory = Path(tempfile.gettempdir()) / "loa-stream-mp3"
    path = directory / f"tone-{bitrate_kbps}k.mp3"
    with _cache_lock:
        if path.exists():
            return path
        directory.mkdir(exist_ok=True)
        rate = _sample_rate(bitrate_kbps)
        notes = [440.0, 554.37, 659.25, 880.0]  # an A major arpeggio, one note per 2 s
        pcm = bytearray()
        for i in range(rate * SOURCE_SECONDS):
            f = notes[(i * len(notes)) // (rate * SOURCE_SECONDS)]
            pcm += struct.pack("<h", int(9000 * math.sin(2 * math.pi * f * i / rate)))
        partial = path.with_suffix(f".{os.getpid()}.part")
        subprocess.run(
            [lame, "--quiet", "-r", "-s", str(rate / 1000), "--bitwidth", "16", "--signed",
             "--little-endian", "-m", "m", "--cbr", "-b", str(bitrate_kbps), "-t",
             "--resample", str(rate / 1000), "-", str(partial)],
            input=bytes(pcm), capture_output=True, check=True)
        os.replace(partial, path)
        return path


class StreamServer:
    """A real HTTP server on a free 127.0.0.1 port serving real MP3 data; runs in a thread."""

    name = "Loa test stream"

    def __init__(self, bitrate_kbps: int = 64) -> None:
        self.bitrate_kbps = bitrate_kbps
        self.audio = mp3_audio(bitrate_kbps)
        self.requests = 0
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._drop = 0  # generation counter: open streams of an older generation close
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> StreamServer:
        server = self

        class Handler(_StreamHandler):
            stream = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="stream-server",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port, "start() the server first"
        return self._port

    def url(self, path: str = "/live.mp3") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def drop_clients(self) -> None:
        """Close every stream being served now (a server restart as listeners see it)."""
        with self._lock:
            self._drop += 1

    # -- used by the handler ---------------------------------------------------------------
    def _count_request(self) -> int:
        with self._lock:
            self.requests += 1
            return self._drop

    def _count_sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _dropped_since(self, generation: int) -> bool:
        return self._stopping.is_set() or self._drop != generation


class _StreamHandler(BaseHTTPRequestHandler):
    stream: StreamServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep the demo's and tests' output quiet
        pass

    def do_GET(self) -> None:
        generation = self.stream._count_request()
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        chunked = query.get("chunked") == "1"
        bytes_per_s = self.stream.bitrate_kbps * 1000 // 8
        if parts.path == "/redirect" and query.get("to"):
            self._head(302, [("Location", query["to"]), ("Content-Length", "0")])
            return
        if parts.path == "/live.mp3":
            total, rate = None, bytes_per_s
        elif parts.path == "/slow.mp3":
            total, rate = None, bytes_per_s // 2
        elif parts.path == "/short.mp3":
            total, rate = int(float(query.get("seconds", "5")) * bytes_per_s), bytes_per_s
        else:
            body = b"404 Not Found\n"
            self._head(404, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            self.wfile.write(body)
            return
        headers = [("Content-Type", "audio/mpeg"), ("icy-br", str(self.stream.bitrate_kbps)),
                   ("icy-name", self.stream.name)]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        elif total is not None:
            headers.append(("Content-Length", str(total)))
        if total is None and not chunked:
            # An ICY-style live stream: HTTP/1.0, no length, ends when the connection closes.
            self.protocol_version = "HTTP/1.0"
        self.close_connection = True
        self._head(200, headers)
        limit = total // 2 if (total is not None and query.get("cut") == "1") else total
        self._pace(rate, limit, chunked and limit == total, chunked, generation)

    def _head(self, code: int, headers: list[tuple[str, str]]) -> None:
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if self.protocol_version == "HTTP/1.1":
            self.send_header("Connection", "close")
        self.end_headers()

    def _pace(self, rate: int, limit: int | None, final_chunk: bool, chunked: bool, generation: int) -> None:
        audio = self.stream.audio
        position = sent = 0
        started = time.monotonic()
        burst = int(rate * BURST_SECONDS)
        try:
            while (limit is None or sent < limit) and not self.stream._dropped_since(generation):
                due = burst + int(rate * (time.monotonic() - started))
                if limit is not None:
                    due = min(due, limit)
                while sent < due:
                    n = min(due - sent, len(audio) - position)
                    piece = audio[position:position + n]
                    self.wfile.write(b"%x\r\n%s\r\n" % (n, piece) if chunked else piece)
                    sent += n
                    position = (position + n) % len(audio)
                    self.stream._count_sent(n)
                if limit is None or sent < limit:
                    time.sleep(SEND_INTERVAL_S)
            if final_chunk and sent >= (limit or 0):
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            pass  # the listener went away: normal for a stream
