# Firmware updates (docs/protocol.md, "Firmware updates (1.2)"): the release's signed manifest,
# its files fetched into the inactive slot with resume, the switch on trial, and the new
# version's confirmation or the old one's report that it rolled back.
#
# Loaded only while an update is under way (an update command, or a record on flash that is
# not final, once the receiver has reported after a boot) and let go after it. Everything the
# board must remember across a reset is in the record RECORD: {"id", "rel", "ver", "url",
# "slot", "st", "why", "got"} (with "tried": why a trial ended, written by the new version
# before it gave up; "boot", "signed", "done", "failed", "events": the steps at boot).
#
# Memory (docs/firmware.md, "Memory"): the signature check imports loa/signature.py (about
# 12 KiB, and 12 KiB more while it runs) and lets it go at once; the download holds one
# CHUNK buffer, one connection and a SHA-256. Beside a stream they run only with the heap's
# room for them (FETCH_ROOM, CHECK_ROOM), else they wait until it ends. Out of heap with
# nothing playing, the receiver resets once and does them at boot, before the receiver is
# made, then resets again (steps_at_boot).

import gc
import json
import os
import random
from binascii import a2b_base64, hexlify
from hashlib import sha256

import asyncio
from micropython import const

from loa import files, slots, unload

RECORD = "update.json"
FINAL = ("confirmed", "failed", "rolled_back")  # loa/app.py UPDATE_FINAL
# The record's states once the trial mark may be written: the files are in the slot, checked.
SWITCHING = ("installing", "rebooting")
# The manifest is at most 8 KiB (docs/firmware-updates.md); manifest.sig about 150 bytes.
MANIFEST_MAX = const(8192)
SIG_MAX = const(1024)
# Where they are kept while an update is under way.
MANIFEST_FILE = "update.mf"
SIG_FILE = "update.sig"
# The update task must report at least this often (a read waits up to READ_TIMEOUT_S).
TASK_LIMIT_MS = const(90000)
# How often the task looks again while it waits for a broadcast to end.
WAIT_MS = const(1000)
# Free heap (after a collection) an update's steps need beside a stream that plays: the
# download (loa/fetch.py, a connection, the first time the qstr pools it grows), and the
# signature check (loa/signature.py and its working set, besides the manifest's own bytes),
# each with room left for the stream's own allocations. With less, they wait until nothing
# plays (docs/firmware.md, "Memory"). The check never awaits, so nothing else allocates
# beside it; a command too large to decode beside a download is sent again by the service.
FETCH_ROOM = const(20480)
CHECK_ROOM = const(28672)


class Failed(Exception):
    """The update failed: ``args[0]`` is the reason (the ack's and the status's why)."""


# Update statuses waiting for the connection (the latest few: each is retained, only the last
# one stays on the broker).
STATUS_QUEUE = const(4)


def version_tuple(value):
    """(major, minor, patch) of "MAJOR.MINOR.PATCH" (0-9999 each, no leading zeros), or None."""
    if not isinstance(value, str) or len(value) > 14:
        return None
    parts = value.split(".")
    if len(parts) != 3:
        return None
    out = []
    for part in parts:
        v = part.encode()
        if not 0 < len(v) <= 4 or (len(v) > 1 and v[0] == 48):
            return None
        for c in v:
            if not 48 <= c <= 57:
                return None
        out.append(int(part))
    return tuple(out)


def _trusted(cfg):
    from loa import keys

    trusted = [a2b_base64(k) for k in keys.TRUSTED]
    del keys
    unload("keys")
    extra = cfg.get("release_key")
    if extra:
        trusted.append(a2b_base64(extra))
    return [k for k in trusted if len(k) == 32]


def check_signature(cfg, text, log=print):
    """Whether manifest.sig (SIG_FILE) is a trusted key's signature of the manifest: the
    MANIFEST_FILE read into ``text`` (a buffer of its length). Imports loa/signature.py for
    the check only. Raises MemoryError if the heap is too small for it."""
    try:
        sig = files.read_json(SIG_FILE, SIG_MAX) or {}
        signature = a2b_base64(sig["signature"])
        key_id = sig.get("key_id")
    except Exception:
        return False
    del sig
    keys = _trusted(cfg)
    with open(MANIFEST_FILE, "rb") as f:
        f.readinto(text)
    gc.collect()
    log("update: checking the signature, free heap", gc.mem_free())
    from loa import signature as ed25519  # let go right after the check

    try:
        for key in keys:
            if key_id and hexlify(sha256(key).digest()[:8]).decode() != key_id:
                continue
            if ed25519.verify(key, text, signature):
                return True
        return False
    finally:
        del ed25519, text
        unload("signature")
        gc.collect()


class _Boot:
    """What an update's steps at boot (steps_at_boot) use of the receiver (loa/app.py's
    Receiver), which is not made yet. It stands for the receiver's schedule as well (none is
    loaded: no URLs to shed) and for its player: a ring of its own for the manifest, allocated
    first, while the heap is in one piece."""

    src = "none"
    online = False
    ssl = None
    shed = False

    def __init__(self, board, cfg, state, supervisor, log):
        from loa.clock import Clock

        gc.collect()
        self.ring = memoryview(bytearray(MANIFEST_MAX))
        self.board = board
        self.cfg = cfg
        self.state = state
        self.supervisor = supervisor
        self.log = log
        self.clock = Clock(board)
        self.schedule = self.player = self
        self.update_status = []
        self.events = []

    def _alive(self, name="session"):
        if self.supervisor is not None:
            self.supervisor.alive(name)

    def raise_event(self, kind, detail=None):
        self.events.append((self.clock.unix_time(), kind, detail))

    def shed_urls(self):
        pass

    def lend_ring(self, n):
        return self.ring[:n]


async def steps_at_boot(board, cfg, state, supervisor, log):
    """An update that ran out of heap beside the receiver's schedule, streams and session
    ("boot" in the record): its signature check and download now, at boot, before the
    receiver is made (loa/app.py), with the link up: the heap then holds the modules, the
    board and the link, not the receiver's buffers, TLS context and schedule. Then the board
    resets, and the receiver, made first in a heap in one piece, carries the update on (the
    files checked again from flash, the statuses sent, the install) or reports its failure;
    the statuses made here are dropped, the events the link raised (modem_reset) kept in the
    record for it. Once: a reset meanwhile leaves the steps to the receiver. Returns only if
    the record has no steps at boot to do."""
    rec = read_record()
    if not rec or not rec.pop("boot", None) or rec.get("st") in FINAL:
        return
    files.write_json(RECORD, rec)
    if supervisor is not None:
        supervisor.register("update", TASK_LIMIT_MS)
    log("update: checking and downloading at boot")
    rx = None
    try:
        rx = _Boot(board, cfg, state, supervisor, log)
        u = Updater(rx, rec)
        board.link_layer().on_event = rx.raise_event
        await board.link_up()
        if await u._verify_manifest():
            rec["signed"] = True
            from loa import fetch

            fetch.check_manifest(u, MANIFEST_FILE)
            if rec["st"] == "offered":
                fetch.remove_tree(rec["slot"] + "/loa")  # whatever an older update left there
                rec["st"] = "downloading"
            files.write_json(RECORD, rec)
            gc.collect()
            await fetch.download(u, rec["slot"])
            rec["done"] = True
    except Failed as exc:
        rec["failed"] = exc.args[0]
    except MemoryError as exc:
        rec["failed"] = "no_memory"
        log("update: at boot:", repr(exc))
    except Exception as exc:  # no link, a flash error: left to the receiver
        log("update: at boot:", repr(exc))
    finally:
        if supervisor is not None:
            supervisor.unregister("update")
        unload("fetch")
    if rx is not None and rx.events:
        rec["events"] = rx.events
    rx = None
    files.write_json(RECORD, rec)
    gc.collect()
    log("update: at boot:", rec.get("failed") or ("done" if rec.get("done") else "left to the receiver"),
        "free heap", gc.mem_free(), "- resetting")
    await board.link_down()
    board.reset()


def read_record():
    return files.read_json(RECORD)


def other_slot(slot):
    return "a" if slot == "b" else "b"


class Updater:
    """One update, for the Receiver of loa/app.py (``rx``)."""

    def __init__(self, rx, record):
        self.rx = rx
        self.rec = record
        self.pct = -1
        self.files = None   # [(path, length, sha256 digest)] of the verified manifest
        self.total = 0
        self.task = None
        self.alone = False  # ran out of heap beside a stream: from now on only while none plays

    # -- the record and the status --------------------------------------------------------

    def state(self, st, why=None, pct=None):
        """Move to ``st``: the record on flash first, then the status (retained) to send."""
        rec = self.rec
        rec["st"] = st
        rec["why"] = why
        files.write_json(RECORD, rec)
        self.report(pct)
        self.rx.log("update:", rec["id"], st, why or "", "" if pct is None else pct)

    def report(self, pct=None):
        rec = self.rec
        msg = {"v": 1, "session": self.rx.state.session, "ts": self.rx.clock.unix_time(), "id": rec["id"],
               "rel": rec["rel"], "ver": rec["ver"], "st": rec["st"], "got": rec.get("got", 0)}
        if pct is not None:
            msg["pct"] = pct
        if rec.get("why"):
            msg["why"] = rec["why"]
        queue = self.rx.update_status
        if len(queue) >= STATUS_QUEUE:
            queue.pop(0)
        queue.append(json.dumps(msg))

    def _final(self, st, why, ack, ack_why):
        self.state(st, why)
        for name in (MANIFEST_FILE, SIG_FILE):
            try:
                os.remove(name)
            except OSError:
                pass
        self.rx.final(self.rec["id"], ack, ack_why)
        self.rx.update = None
        unload("update")

    def fail(self, why):
        self._final("failed", why, "failed", why)

    def confirm(self):
        """The new version has sent its birth and first report: its slot is active."""
        self._final("confirmed", None, "done", None)

    def rolled_back(self, why):
        self._final("rolled_back", why, "failed", "rolled_back")

    # -- the task ---------------------------------------------------------------------------

    def start(self):
        self.task = asyncio.create_task(self.run())

    def alive(self):
        self.rx._alive("update")

    async def sleep(self, ms):
        end = self.rx.board.uptime_ms() + ms
        while self.rx.board.uptime_ms() < end:
            self.alive()
            await asyncio.sleep_ms(min(250, ms))

    async def drained(self, events=False):
        """Wait (while online, up to a minute) until the statuses queued (and ``events``: the
        events) are sent."""
        rx = self.rx
        end = rx.board.uptime_ms() + 60000
        while (rx.update_status or events and rx.events) and rx.online and rx.board.uptime_ms() < end:
            self.alive()
            await asyncio.sleep_ms(50)

    def room(self, need=FETCH_ROOM):
        """Whether a step may run now: nothing plays, or the heap has ``need`` bytes free beside
        the stream (and the update has not run out of heap beside one already)."""
        if self.rx.src == "none":
            return True
        if self.alone:
            return False
        if gc.mem_free() < need:
            gc.collect()
        return gc.mem_free() >= need

    async def until_room(self, need=FETCH_ROOM):
        """Wait while a stream plays and the heap has not ``need`` bytes free beside it."""
        while not self.room(need):
            self.alive()
            await asyncio.sleep_ms(WAIT_MS)

    async def run(self):
        rx = self.rx
        rec = self.rec
        if rx.supervisor is not None:
            rx.supervisor.register("update", TASK_LIMIT_MS)
        try:
            if rec.get("failed"):  # in the steps at boot (steps_at_boot)
                raise Failed(rec["failed"])
            fresh = rec["st"] == "offered"
            if fresh:
                jitter = rec.get("jit", 0)
                if jitter:
                    await self.sleep(int(random.uniform(0, jitter) * 1000))
            while not await self._steps(fresh):
                # Out of heap beside a stream: the steps again once nothing plays (a reset
                # would cut the broadcast); what is in the slot already is kept.
                fresh = False
                gc.collect()
                rx.log("update: no heap beside the stream: going on once it ends")
        except Failed as exc:
            self.fail(exc.args[0])
        except MemoryError:
            if rec.get("st") in ("offered", "downloading") and not rec.get("reset"):
                # A heap too fragmented now (a stream and a large schedule came before): once,
                # the update goes on after a reset, in a heap in one piece.
                gc.collect()
                rec["reset"] = True
                rec["boot"] = True
                files.write_json(RECORD, rec)
                rx.log("update: no heap for the update now: going on after a reset")
                rx.reboot = True
            else:
                self.fail("no_memory")
        except Exception as exc:  # a flash that cannot be written
            rx.log("update: error", repr(exc))
            self.fail("storage" if isinstance(exc, OSError) else "download")
        finally:
            if rx.supervisor is not None:
                rx.supervisor.unregister("update")

    async def _steps(self, fresh):
        """Manifest, check, download, install. False if the heap ran out beside a stream."""
        rx = self.rx
        rec = self.rec
        slot = rec["slot"]
        try:
            await self.until_room()
            if rec.get("done"):  # checked and downloaded at boot (steps_at_boot)
                self.state("downloading", pct=100)
            else:
                if not await self._verify_manifest():
                    return True  # checked at the next boot (the receiver resets now)
                from loa import fetch

                fetch.check_manifest(self, MANIFEST_FILE)
                gc.collect()
                if fresh:
                    fetch.remove_tree(slot + "/loa")  # whatever an older update left there
                self.state("downloading", pct=fetch.percent(self, 0))
                await fetch.download(self, slot)
                del fetch
                unload("fetch")
            self.state("downloaded")  # each file's length and SHA-256 checked as it came
        except MemoryError:
            if rx.src == "none" or self.alone:
                raise
            self.alone = True
            unload("fetch")
            unload("signature")
            return False
        self.state("verified")
        rx.board.checkpoint("verified")
        await self._install(slot)
        return True

    # -- the manifest -----------------------------------------------------------------------

    async def _verify_manifest(self):
        """Fetch manifest.json (into MANIFEST_FILE) and manifest.sig, and check the manifest's
        exact bytes against the trusted keys. Raises Failed("signature"); returns False when the
        heap is too small for the check now: it is then done with the download at the next boot
        (steps_at_boot), before the receiver's tasks and session take their heap."""
        rec = self.rec
        signed = rec.get("signed")
        if signed is True:
            return True  # checked at boot, from the files on flash
        if signed is not None:
            raise Failed("signature" if signed is False else "no_memory")
        from loa import fetch  # the HTTP code is let go during the check

        size = await fetch.save(self, "manifest.json", MANIFEST_FILE, MANIFEST_MAX)
        await fetch.save(self, "manifest.sig", SIG_FILE, SIG_MAX)
        del fetch
        unload("fetch")
        await self.until_room(CHECK_ROOM + size)
        rx = self.rx
        # From here to the end of the check nothing awaits, so no stream can start meanwhile:
        # with nothing playing the manifest is read into the player's idle ring (no block of
        # its size needed), and the schedule's URLs (read back from flash by the control task)
        # make room for the check's 28 KiB.
        rx.schedule.shed_urls()
        text = None
        try:
            text = rx.player.lend_ring(size) if rx.src == "none" else bytearray(size)
            good = check_signature(rx.cfg, text, rx.log)
        except MemoryError:
            text = None
            if rx.src != "none":
                raise  # beside a stream: again once nothing plays (run)
            gc.collect()
            if rec.get("reset"):
                raise  # after the reset already: no_memory (run, steps_at_boot)
            rec["reset"] = True
            rec["boot"] = True
            files.write_json(RECORD, rec)
            rx.log("update: no heap for the signature check now: checking it at the next boot")
            rx.reboot = True
            return False
        text = None
        if not good:
            raise Failed("signature")
        if rx.schedule.shed:
            rx.schedule.load()  # the URLs back before the download takes its heap
        return True

    # -- the switch -----------------------------------------------------------------------------

    def _defer_reason(self):
        """Why not install now (a bulletin or a schedule slot plays), or None."""
        rx = self.rx
        if rx.src == "sched":
            return "playing_slot"
        if rx.src == "cmd" and rx.rank > 0:
            return "playing_emergency" if rx.rank > 1 else "playing_priority"
        return None

    async def _install(self, slot):
        """Once no bulletin or slot plays: the trial mark, then the reset (loa/app.py)."""
        rx = self.rx
        while True:
            why = self._defer_reason()
            if why is None:
                break
            if self.rec["st"] != "deferred" or self.rec["why"] != why:
                self.state("deferred", why)
            self.alive()
            await asyncio.sleep_ms(WAIT_MS)
        if self.rec["st"] == "deferred":
            await self.drained(True)  # the end of what deferred it is told first
        slots.mark_trial(slot)
        rx.board.checkpoint("marked")
        self.state("installing")
        await self.drained()
        rx.board.checkpoint("installing")
        self.state("rebooting")
        await self.drained()
        rx.board.checkpoint("rebooting")
        rx.reboot = True


def resume(rx):
    """With a record that is not final, once the receiver has reported (loa/app.py), so that
    what it tells goes out in the session it is sent in: the new version confirmed; the old one
    after a trial that did not confirm: rolled back; an update cut by a reset before the switch:
    carried on (returned, under way)."""
    rec = read_record()
    if not rec or rec.get("st") in FINAL or not isinstance(rec.get("id"), str):
        return None
    events = rec.pop("events", None)
    if events:  # raised by the link during the steps at boot, before the reset
        files.write_json(RECORD, rec)
        for ts, kind, detail in events:
            rx.events.append((ts, kind, detail))
    u = Updater(rx, rec)
    if rec.get("slot") == rx.slot:
        u.confirm()
        return None
    if rec.get("st") in SWITCHING:
        why = rec.get("tried")
        if not why:
            why = "watchdog" if rx.board.reset_cause() == "watchdog" else "reset"
        u.rolled_back(why)
        return None
    u.start()
    return u


def trial_ended(why):
    """The new version gives up its trial (``why``: no_connection, crashed): noted for the old
    version, which reports it."""
    rec = read_record()
    if rec and rec.get("st") not in FINAL:
        rec["tried"] = why
        files.write_json(RECORD, rec)
