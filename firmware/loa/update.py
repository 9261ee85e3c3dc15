# Firmware updates (docs/protocol.md, "Firmware updates (1.2)"): the release's signed manifest,
# its files fetched into the inactive slot with resume, the switch on trial, and the new
# version's confirmation or the old one's report that it rolled back.
#
# Loaded only while an update is under way (an update command, or a record on flash that is
# not final at boot) and let go after it. Everything the board must remember across a reset is
# in the record RECORD: {"id", "rel", "ver", "url", "slot", "st", "why", "got"} (with
# "tried": why a trial ended, written by the new version before it gave up).
#
# Memory (docs/firmware.md, "Memory"): the signature check imports loa/signature.py (about
# 16 KiB, and 12 KiB more while it runs) and lets it go at once; the download holds one
# CHUNK buffer, one connection and a SHA-256. Neither starts, and a download stops (to resume
# by Range), while a stream plays: a schedule command decoded beside a stream and a download
# would not fit in the 4G receiver's heap.

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
FINAL = ("confirmed", "failed", "rolled_back")
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


def check_at_boot(cfg):
    """The signature check an update left for this boot (no heap for it while running): done
    now, before the receiver takes its heap; the update goes on with its outcome."""
    rec = read_record()
    if not rec or rec.get("check") != "boot" or rec.get("st") in FINAL:
        return
    del rec["check"]
    try:
        size = os.stat(MANIFEST_FILE)[6]
        rec["signed"] = check_signature(cfg, bytearray(size)) if size <= MANIFEST_MAX else False
    except MemoryError:
        rec["signed"] = "no_memory"
    except OSError:
        rec["signed"] = False
    files.write_json(RECORD, rec)
    gc.collect()


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

    async def drained(self):
        """Wait (while online, up to a minute) until the statuses queued are sent."""
        rx = self.rx
        end = rx.board.uptime_ms() + 60000
        while rx.update_status and rx.online and rx.board.uptime_ms() < end:
            self.alive()
            await asyncio.sleep_ms(50)

    async def until_quiet(self):
        """Wait while a stream plays (no signature check or download beside it)."""
        while self.rx.src != "none":
            self.alive()
            await asyncio.sleep_ms(WAIT_MS)

    async def run(self):
        rx = self.rx
        rec = self.rec
        if rx.supervisor is not None:
            rx.supervisor.register("update", TASK_LIMIT_MS)
        try:
            fresh = rec["st"] == "offered"
            if fresh:
                jitter = rec.get("jit", 0)
                if jitter:
                    await self.sleep(int(random.uniform(0, jitter) * 1000))
            await self.until_quiet()
            if not await self._verify_manifest():
                return  # checked at the next boot (the receiver resets now)
            from loa import fetch

            fetch.check_manifest(self, MANIFEST_FILE)
            gc.collect()
            slot = rec["slot"]
            if fresh:
                fetch.remove_tree(slot + "/loa")  # whatever an older update left there
            self.state("downloading", pct=fetch.percent(self, 0))
            await fetch.download(self, slot)
            self.state("downloaded")  # each file's length and SHA-256 checked as it came
            del fetch
            unload("fetch")
            self.state("verified")
            rx.board.checkpoint("verified")
            await self._install(slot)
        except Failed as exc:
            self.fail(exc.args[0])
        except MemoryError:
            if rec.get("st") in ("offered", "downloading") and not rec.get("reset"):
                # A heap too fragmented now (a stream and a large schedule came before): once,
                # the update goes on after a reset, in a heap in one piece.
                gc.collect()
                rec["reset"] = True
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

    # -- the manifest -----------------------------------------------------------------------

    async def _verify_manifest(self):
        """Fetch manifest.json (into MANIFEST_FILE) and manifest.sig, and check the manifest's
        exact bytes against the trusted keys. Raises Failed("signature"); returns False when the
        heap is too small for the check now: it is then done at the next boot (check_at_boot),
        before the receiver takes its heap, and the update goes on after it."""
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
        await self.until_quiet()
        rx = self.rx
        # From here to the end of the check nothing awaits, so no stream can start meanwhile:
        # the manifest is read into the player's idle ring (no block of its size needed), and
        # the schedule's URLs (read back from flash by the control task) make room for the
        # check's 28 KiB.
        rx.schedule.shed_urls()
        try:
            good = check_signature(rx.cfg, rx.player.lend_ring()[:size], rx.log)
        except MemoryError:
            gc.collect()
            rec["check"] = "boot"
            files.write_json(RECORD, rec)
            rx.log("update: no heap for the signature check now: checking it at the next boot")
            rx.reboot = True
            return False
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
        slots.mark_trial(slot)
        rx.board.checkpoint("marked")
        self.state("installing")
        self.state("rebooting")
        rx.board.checkpoint("rebooting")
        rx.reboot = True


def resume(rx, boot=True):
    """With a record that is not final: the new version on its first run (confirmed after its
    first report, loa/app.py), the old one after a trial that did not confirm (rolled back), or
    an update cut by a reset before the switch: carried on, at boot only once the receiver has
    reported (loa/app.py), so that it does not take the heap beside the first connection."""
    rec = read_record()
    if not rec or rec.get("st") in FINAL or not isinstance(rec.get("id"), str):
        return None
    u = Updater(rx, rec)
    if rec.get("slot") == rx.slot:
        return u  # the new version: loa/app.py confirms it after its first report
    if rec.get("st") in SWITCHING:
        why = rec.get("tried")
        if not why:
            why = "watchdog" if rx.board.reset_cause() == "watchdog" else "reset"
        u.rolled_back(why)
        return None
    if boot:
        rx.update_waiting = True
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
