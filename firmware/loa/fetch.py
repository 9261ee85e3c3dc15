# Fetching a release (loa/update.py): HTTP GET with the receiver's own login and
# "Range: bytes=N-" resume, the manifest's rules, the files into the inactive slot and their
# lengths and SHA-256. Loaded for these steps only: it is let go while the manifest's
# signature is checked, so that the check has the heap.

import json
import os
from binascii import b2a_base64
from hashlib import sha256

import asyncio
from micropython import const

from loa import VERSION
from loa.update import Failed, version_tuple

# Bytes read from the network and written to flash at a time.
CHUNK = const(1024)
# Failed requests in a row (no byte came) before the download is given up; the pause before
# a retry doubles from PAUSE_MS up to PAUSE_CAP_MS. A request cut after bytes came is made
# again at once.
RETRIES = const(6)
PAUSE_MS = const(1000)
PAUSE_CAP_MS = const(60000)
# A request that sends nothing for this long is cut.
READ_TIMEOUT_S = const(30)
MAX_HEADER_LINE = const(256)
MAX_HEADERS = const(32)


def hardware_mpy_ok(text):
    """True if bytecode of ``text`` ("6.3", from mpy-cross --version) loads here: the same
    major .mpy version (a bytecode-only .mpy loads whatever its sub-version)."""
    import sys

    mpy = getattr(sys.implementation, "_mpy", None)
    major = text.split(".")[0] if isinstance(text, str) else ""
    if mpy is None or not major.isdigit():
        return False
    return int(major) == mpy & 0xFF


def remove_tree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        if entry[1] == 0x4000:  # a directory
            remove_tree(child)
            try:
                os.rmdir(child)
            except OSError:
                pass
        else:
            os.remove(child)


def _make_dirs(path):
    """Create the directories of file ``path`` (not the file)."""
    at = 0
    while True:
        at = path.find("/", at + 1)
        if at < 0:
            return
        try:
            os.mkdir(path[:at])
        except OSError:
            pass  # it exists


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _safe_path(path):
    """A manifest path: loa/<plain names>.mpy (the service checked it; checked again here, so
    that nothing is ever written outside the slot)."""
    if not isinstance(path, str) or not path.startswith("loa/") or not path.endswith(".mpy"):
        return False
    for part in path.split("/"):
        v = part.encode()
        if not v or v[0] == 46:  # "."
            return False
        for c in v:
            if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c in b"_.-"):
                return False
    return True

# -- HTTP ---------------------------------------------------------------------------------


async def request(u, name, start):
    """GET <url>/<name> from byte ``start``: (reader, writer, bytes to come or -1,
    where they start). Raises OSError if there is no usable answer."""
    from loa.player import split_url

    rx = u.rx
    tls, host, port, path = split_url(u.rec["url"].rstrip("/") + "/" + name)
    if tls:
        if rx.ssl is None:
            rx.ssl = rx.board.ssl_context(rx.cfg["ca"], bool(rx.cfg["ca"]))
        reader, writer = await asyncio.open_connection(host, port, ssl=rx.ssl, server_hostname=host)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        login = b2a_base64((rx.cfg["id"] + ":" + rx.cfg["password"]).encode()).strip()
        if port != (443 if tls else 80):  # RFC 9110: the port, unless the scheme's own
            host = "%s:%d" % (host, port)
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nAuthorization: Basic " + login
                     + (("\r\nRange: bytes=%d-" % start).encode() if start else b"")
                     + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        status = line[:MAX_HEADER_LINE].split(None, 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/"):
            raise OSError("not an HTTP answer")
        code = int(status[1])
        length = -1
        first = 0
        for _ in range(MAX_HEADERS + 1):
            line = (await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S))[:MAX_HEADER_LINE]
            if not line:
                raise OSError("closed in the header")
            line = line.strip()
            if not line:
                break
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"content-range":  # "bytes 100-199/200"
                first = int(value.strip()[6:].split(b"-")[0])
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                raise OSError("chunked")
        else:
            raise OSError("too many header lines")
        if code == 416 and start:  # nothing after start: the file was complete
            writer.close()
            return None, None, 0, start
        if code == 200:
            first = 0
        elif code != 206:
            raise OSError("HTTP %d" % code)
        return reader, writer, length, first
    except BaseException:
        writer.close()
        raise


async def read(u, reader, buf):
    n = await asyncio.wait_for(reader.readinto(buf), READ_TIMEOUT_S)
    if n:
        u.rec["got"] = u.rec.get("got", 0) + n
    return n


async def save(u, name, target, limit):
    """A small file (manifest.json, manifest.sig) whole into ``target`` on flash, in CHUNK
    pieces (no block of its size needed in the heap), with retries. Returns its length."""
    failures = 0
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    while True:
        writer = None
        try:
            reader, writer, length, _ = await request(u, name, 0)
            if length > limit or reader is None:
                raise Failed("manifest" if name == "manifest.json" else "signature")
            got = 0
            with open(target, "wb") as f:
                while got <= limit:
                    n = await read(u, reader, mv)
                    if not n:
                        break
                    f.write(mv[:n])
                    got += n
            if got > limit:
                raise Failed("manifest" if name == "manifest.json" else "signature")
            if length >= 0 and got < length:
                raise OSError("cut")
            return got
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            failures += 1
            u.rx.log("update:", name, "failed", failures, repr(exc))
            if failures > RETRIES:
                raise Failed("download")
            await u.sleep(min(PAUSE_CAP_MS, PAUSE_MS << (failures - 1)))
        finally:
            if writer is not None:
                writer.close()


def check_manifest(u, path):
    """The verified manifest at ``path``: installable here? Keeps its files' (path, length,
    SHA-256) in ``u.files``. Raises Failed("manifest")."""
    rec = u.rec
    out = []
    total = 0
    try:
        with open(path) as f:
            m = json.load(f)  # read as it is parsed: no copy of the text in the heap
        listed = m["files"]
        mine = version_tuple(VERSION)
        oldest = version_tuple(m["min_version"])
        ok = (m.get("format") == 1 and m["hardware"] == u.rx.cfg["hw"] and m["version"] == rec["ver"]
              and oldest is not None and mine is not None and oldest <= mine and hardware_mpy_ok(m["mpy_version"])
              and isinstance(listed, list) and 0 < len(listed) <= 64)
        if ok:
            for entry in listed:
                path, length, digest = entry["path"], entry["length"], entry["sha256"]
                if not _safe_path(path) or not isinstance(length, int) or length < 0 or len(digest) != 64:
                    ok = False
                    break
                out.append((path, length, bytes.fromhex(digest)))
                total += length
        ok = ok and m.get("total_length") == total
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok or "loa/app.mpy" not in [f[0] for f in out]:
        raise Failed("manifest")
    u.files = out
    u.total = total


# -- the files ------------------------------------------------------------------------------


def percent(u, done):
    return done * 100 // u.total if u.total else 100


async def progress(u, done):
    """The status at every 10 % (each sent before the next is made, while online)."""
    pct = percent(u, done)
    if pct // 10 > u.pct // 10:
        u.pct = pct
        u.report(pct)
        await u.drained()
        u.rx.board.checkpoint("downloading", pct)


async def download(u, slot):
    done = 0
    buf = bytearray(CHUNK)
    for path, length, digest in u.files:
        target = slot + "/" + path
        _make_dirs(target)
        await fetch(u, path, target, length, digest, buf, done)
        done += length
        await progress(u, done)
    u.rx.board.checkpoint("downloaded")


def _hash_prefix(target, buf):
    """A SHA-256 of what ``target`` already holds (a file begun before a reset)."""
    h = sha256()
    try:
        with open(target, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
    except OSError:
        pass
    return h


async def fetch(u, path, target, length, digest, buf, done):
    """``path`` into ``target`` until it has ``length`` bytes, hashed as they come, resuming
    where it stands; a file whose length or SHA-256 is not the manifest's is deleted."""
    failures = 0
    mv = memoryview(buf)
    h = None
    while True:
        have = _size(target)
        if have > length:
            os.remove(target)
            have = -1
        if have < 0:
            have = 0
            h = sha256()
        if h is None:
            h = _hash_prefix(target, buf)
        if have == length:
            break
        await u.until_room()
        writer = None
        came = False
        try:
            reader, writer, left, first = await request(u, path, have)
            if reader is None:
                break  # nothing after ``have`` (416): shorter than the manifest says
            if first != have:
                if first != 0:
                    raise OSError("unexpected range")
                os.remove(target)  # the server sent the whole file again
                have = 0
                h = sha256()
            with open(target, "ab" if have else "wb") as f:
                while have < length:
                    if not u.room():
                        break  # a stream started, the heap short: resume once it ends
                    n = await read(u, reader, mv[:min(CHUNK, length - have)])
                    if not n:
                        break
                    f.write(mv[:n])
                    h.update(mv[:n])
                    have += n
                    came = True
                    u.alive()
                    await progress(u, done + have)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            u.rx.log("update:", path, "cut at", have, repr(exc))
        finally:
            if writer is not None:
                writer.close()
        if have >= length or not u.room():
            continue
        if came:  # cut after some progress: again at once
            failures = 0
            continue
        failures += 1
        if failures > RETRIES:
            raise Failed("download")
        await u.sleep(min(PAUSE_CAP_MS, PAUSE_MS << (failures - 1)))
    if have != length or h.digest() != digest:
        try:
            os.remove(target)
        except OSError:
            pass
        raise Failed("hash")
