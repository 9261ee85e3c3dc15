# An update command's own fields and checks (docs/protocol.md, "Firmware updates (1.2)"):
# loaded when one arrives and let go right after, so that neither the idle receiver nor an
# update's signature check holds this code. The fields are checked as the protocol's
# definition does (UpdateCommand: rel, ver, hw, url, jit, down in that order; a bad url is
# "bad_url", anything else "malformed"); then whether this receiver takes it.

from micropython import const

from loa import VERSION
from loa.commands import _bounded, _get, _stream_url

RELEASE_MAX = 0x7FFFFFFF
HARDWARE_MAX = const(40)
JITTER_MAX = const(3600)
# What pydantic's lax mode reads as a bool from a string.
_TRUE = ("1", "on", "t", "true", "y", "yes")
_FALSE = ("0", "off", "f", "false", "n", "no")


def _hardware(value):
    """A hardware family: lower-case letters and digits in words joined by "-"."""
    if not isinstance(value, str) or not 0 < len(value) <= HARDWARE_MAX:
        return False
    lead = 45
    for c in value.encode():
        if c == 45:
            if lead == 45:
                return False
        elif not (97 <= c <= 122 or 48 <= c <= 57):
            return False
        lead = c
    return lead != 45


def _flag(value):
    """``value`` as a bool the way pydantic's lax mode reads one, or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, float) and value in (0.0, 1.0):
        return value == 1.0
    if isinstance(value, str):
        text = value.lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def fields(raw):
    """(rel, ver, hw, url, jit, down), or the reason the definition refuses them (a str)."""
    from loa.update import version_tuple

    rel = _bounded(_get(raw, "rel", "release_id"), 1, RELEASE_MAX)
    ver = _get(raw, "ver", "release_version")
    hw = _get(raw, "hw", "hardware")
    if rel is None or version_tuple(ver) is None or not _hardware(hw):
        return "malformed"
    url = _get(raw, "url", "url")
    if not _stream_url(url):
        return "bad_url"
    jit = _bounded(_get(raw, "jit", "jitter_s", 0), 0, JITTER_MAX)
    down = _flag(_get(raw, "down", "allow_downgrade", False))
    if jit is None or down is None:
        return "malformed"
    return rel, ver, hw, url, jit, down


def offer(rx, cid, raw):
    """The update command ``cid`` for the Receiver ``rx`` (loa/app.py): refused, answered
    again, or accepted and started."""
    from loa import update

    got = fields(raw)
    if isinstance(got, str):
        rx.final(cid, "rejected", got)
        return
    rel, ver, hw, url, jit, down = got
    rec = rx.update.rec if rx.update is not None else update.read_record()
    if rec and rec.get("st") not in update.FINAL:
        if rec.get("id") == cid:  # sent again while under way (or before the confirmation)
            rx.ack(cid, "accepted", dup=True)
        else:
            rx.final(cid, "rejected", "update_busy")
        return
    if hw != rx.cfg["hw"]:
        rx.final(cid, "rejected", "wrong_hardware")
        return
    offered = update.version_tuple(ver)
    running = update.version_tuple(VERSION)
    if not down and offered is not None and running is not None and offered < running:
        rx.final(cid, "rejected", "downgrade")
        return
    u = update.Updater(rx, {"id": cid, "rel": rel, "ver": ver, "url": url, "jit": jit,
                            "slot": update.other_slot(rx.slot), "st": "offered", "got": 0})
    rx.ack(cid, "accepted")
    u.state("offered")
    if u.room():  # nothing plays, or the heap has room beside the stream
        rx.update = u
        u.start()
    else:  # started by the control task once there is room (loa/app.py): nothing held meanwhile
        rx.update_waiting = True
