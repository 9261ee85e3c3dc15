# Commands from the service (docs/protocol.md "Commands"): decoded with exactly the verdicts
# of the service's own definition (fleet_service/protocol: codec.decode_command over the
# pydantic models), and remembered so that none is ever carried out twice.
#
# The definition is pydantic's lax mode, so this follows it where that matters for a verdict:
# fields are checked in the models' order and the first bad one gives the reason; integers
# may come as whole floats or numeric strings; every field may also be given by its long
# name ("priority" for "pri", "schedule_version" for "ver").

import json

from micropython import const

from loa import files
from loa.schedule import FOREVER_AFTER, FOREVER_BEFORE, MAX_SLOTS, NO_VOLUME, days_from_civil

COMMAND_MAX = const(8192)
# How many commands (id and final outcome) are remembered on flash: a repeated delivery of
# one of them is answered, never carried out again.
REMEMBERED = const(32)
URL_MAX = const(256)
ID_MAX = const(32)
SLOT_ID_MAX = const(16)
NTP_HOST_MAX = const(64)
# Brackets open at once, outside strings: deeper is not a command (a schedule nests three deep).
DEPTH_MAX = const(32)
UINT32_MAX = 0xFFFFFFFF  # schedule versions; Unix seconds ("ts", "exp")
I64 = 1 << 63
OPS = ("play", "stop", "volume", "reboot", "config", "schedule", "update")
PRIORITIES = ("normal", "priority", "emergency")  # the index is the rank
# The settings a config command may change, with their bounds (None: a host name).
SETTINGS = {"telemetry_interval": (10, 3600), "keepalive": (30, 1200), "ntp": None}

# Unicode White_Space: what pydantic strips around a number given as a string.
_STRIPPED = (" \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# CPython's str.isspace(), which the protocol's stream URL check uses (MicroPython's knows
# only ASCII). A tuple of one-character strings, made at import: iterating a string makes
# them (qstrs, for good) on the first command instead, when a fragmented heap may have no
# room for a new qstr pool.
_SPACES = tuple(_STRIPPED + "\x1c\x1d\x1e\x1f")
_DIGITS = "0123456789"
_ABSENT = object()

# The checks below look at codes, times and dates byte by byte (their UTF-8, where anything
# outside ASCII fails them): MicroPython makes every one-character string it hands out a qstr,
# kept for good in pools that grow in blocks of a few hundred bytes, at the arrival of a command
# in a heap that may be fragmented by then.


class Rejected(Exception):
    """A command not carried out: ``reason`` is the ack's "why"; ``command_id`` is None when
    the command has no usable id (then only a bad_command event can tell)."""

    def __init__(self, reason, command_id=None):
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id


def _code(value, longest, extra=b"-_"):
    if not isinstance(value, str) or not 0 < len(value) <= longest:
        return False
    for c in value.encode():
        if not (97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57 or c in extra):  # a-z A-Z 0-9
            return False
    return True


def _integer(value):
    """``value`` as an int the way pydantic's lax mode reads one, or None."""
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        try:
            n = int(value)
        except (OverflowError, ValueError):  # inf, nan
            return None
        return n if n == value and -I64 <= n < I64 else None
    if not isinstance(value, str):
        return None
    start, end = 0, len(value)
    while start < end and value[start] in _STRIPPED:
        start += 1
    while end > start and value[end - 1] in _STRIPPED:
        end -= 1
    text = value[start:end]
    whole, dot, fraction = text.partition(".")
    if dot and (not fraction or fraction.strip("0")):
        return None  # "5.0" and "5.00" are whole numbers; "5.", "5.5" are not
    negative = whole.startswith("-")
    if negative or whole.startswith("+"):
        whole = whole[1:]
    digits = ""
    for i, c in enumerate(whole):
        if c == "_" and 0 < i < len(whole) - 1 and whole[i - 1] != "_":
            continue
        if c not in _DIGITS:
            return None
        digits += c
    if not digits:
        return None
    n = int(digits)
    return -n if negative else n


def _bounded(value, low, high):
    n = _integer(value)
    return n if n is not None and low <= n <= high else None


def _stream_url(value):
    if not isinstance(value, str) or len(value) > URL_MAX:
        return False
    if not (value.startswith("http://") or value.startswith("https://")):
        return False
    for c in _SPACES:  # searching the URL for each allocates nothing
        if c in value:
            return False
    # A lone surrogate (an escaped "\ud800") is no text to the definition: it is held as UTF-8
    # 0xED 0xA0-0xBF, read in place (a MicroPython str is a buffer; CPython's stubs say not).
    lead = 0
    for byte in memoryview(value):  # type: ignore
        if lead == 0xED and byte >= 0xA0:
            return False
        lead = byte
    return True


def _clock_time(value):
    """Seconds after midnight of "HH:MM" or "HH:MM:SS", or None."""
    if not isinstance(value, str):
        return None
    # The definition's pattern ends in "$", which in Python also matches before a final
    # newline; only the HH:MM:SS form then survives its conversion to seconds.
    if len(value) == 9 and value.endswith("\n"):
        value = value[:8]
    v = value.encode()
    n = len(v)
    if n != len(value) or n not in (5, 8) or v[2] != 58 or (n == 8 and v[5] != 58):  # ":"
        return None
    total = 0
    for pos, scale, tens in ((0, 3600, 2), (3, 60, 5), (6, 1, 5)):
        if pos >= n:
            break
        a, b = v[pos] - 48, v[pos + 1] - 48
        if not (0 <= a <= tens and 0 <= b <= 9):
            return None
        total += (a * 10 + b) * scale
    return total if total < 86400 else None


def _date(value):
    """Day number of "YYYY-MM-DD" (a real calendar date), or None."""
    if not isinstance(value, str):
        return None
    v = value.encode()
    if len(v) != 10 or len(value) != 10 or v[4] != 45 or v[7] != 45:  # "-"
        return None
    for i in (0, 1, 2, 3, 5, 6, 8, 9):
        if not 48 <= v[i] <= 57:
            return None
    year, month, day = int(value[:4]), int(value[5:7]), int(value[8:])
    if year < 1 or not 1 <= month <= 12:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]:
        return None
    return days_from_civil(year, month, day)


def _get(raw, short, long, default=_ABSENT):
    """A field by its wire name, else by its long name (the definition accepts both)."""
    if short in raw:
        return raw[short]
    return raw.get(long, default)


def _checked(payload):
    """What the definition requires of a command's JSON beyond what MicroPython's parser
    checks: at most DEPTH_MAX brackets open at once outside strings (checked before parsing,
    so that nesting never runs the heap out), and strict UTF-8 (the parser lets overlong
    forms, surrogates and code points beyond U+10FFFF pass)."""
    depth = lead = 0
    quoted = escaped = False
    for byte in payload:
        if escaped:
            escaped = False
        elif quoted:
            if byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > DEPTH_MAX:
                return False
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
        if byte >= 0x80 and (byte == 0xC0 or byte == 0xC1 or byte >= 0xF5 or (lead == 0xE0 and byte < 0xA0)
                             or (lead == 0xED and byte >= 0xA0) or (lead == 0xF0 and byte < 0x90)
                             or (lead == 0xF4 and byte >= 0x90)):
            return False
        lead = byte
    return True


def parse(payload):
    """The JSON object in ``payload``; Rejected("malformed") without an id if there is none."""
    if len(payload) > COMMAND_MAX or not _checked(payload):
        raise Rejected("malformed")
    try:
        raw = json.loads(payload)
    except MemoryError:
        raise  # a command that ran a full heap out is raised as it is, for the caller
    except Exception:  # not JSON, not UTF-8
        raise Rejected("malformed")
    if not isinstance(raw, dict):
        raise Rejected("malformed")
    return raw


def usable_id(raw):
    """The command id to acknowledge a rejection with, or None."""
    value = raw.get("id")
    return value if _code(value, ID_MAX) else None


def decode(payload):
    """A valid command as a dict {"id", "op", "pri" (rank), "ts", "exp", and by op "url",
    "dur", "vol", "set", "ver", "tz", "slots", and for "update" the "raw" JSON object), or
    Rejected saying why not."""
    raw = parse(payload)
    cid = usable_id(raw)
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise Rejected("unknown_op", cid)
    cmd = {"op": op}  # type: dict
    version = _get(raw, "v", "version", 1)
    if isinstance(version, str) or version != 1:  # 1, true and 1.0 all pass
        raise Rejected("malformed", cid)
    cmd["id"] = _get(raw, "id", "command_id")
    if not _code(cmd["id"], ID_MAX):
        raise Rejected("malformed", cid)
    priority = _get(raw, "pri", "priority", "normal")
    if not isinstance(priority, str) or priority not in PRIORITIES:
        raise Rejected("malformed", cid)
    cmd["pri"] = PRIORITIES.index(priority)
    for short, long in (("ts", "issued_at"), ("exp", "expires_at")):
        cmd[short] = _bounded(_get(raw, short, long), 0, UINT32_MAX)
        if cmd[short] is None:
            raise Rejected("malformed", cid)
    if op == "play":
        cmd["url"] = _get(raw, "url", "url")
        if not _stream_url(cmd["url"]):
            raise Rejected("bad_url", cid)
        duration = _get(raw, "dur", "duration_s", None)
        if duration is not None:
            duration = _bounded(duration, 1, 86400)
            if duration is None:
                raise Rejected("malformed", cid)
        cmd["dur"] = duration
    elif op == "volume":
        cmd["vol"] = _bounded(_get(raw, "vol", "volume"), 0, 100)
        if cmd["vol"] is None:
            raise Rejected("volume_range", cid)
    elif op == "config":
        cmd["set"] = _settings(_get(raw, "set", "settings"))
        if cmd["set"] is None:
            raise Rejected("unknown_setting", cid)
    elif op == "schedule":
        cmd["ver"] = _bounded(_get(raw, "ver", "schedule_version"), 0, UINT32_MAX)
        if cmd["ver"] is None:
            raise Rejected("bad_schedule", cid)
        cmd["tz"] = _bounded(_get(raw, "tz", "tz_offset_min", 420), -720, 840)
        cmd["slots"] = _slots(_get(raw, "slots", "slots", []))
        if cmd["tz"] is None or cmd["slots"] is None:
            raise Rejected("bad_schedule", cid)
    elif op == "update":
        cmd["raw"] = raw  # its own fields are checked by loa/offer.py, loaded only for it
    return cmd


def _settings(value):
    """The settings given (those set to null left out), or None if any is unknown or bad."""
    if not isinstance(value, dict):
        return None
    out = {}
    for key in value:
        if key not in SETTINGS:
            return None
        setting = value[key]
        if setting is None:
            continue
        bounds = SETTINGS[key]
        if bounds is None:
            if not _code(setting, NTP_HOST_MAX, b".-"):
                return None
        else:
            setting = _bounded(setting, bounds[0], bounds[1])
            if setting is None:
                return None
        out[key] = setting
    return out


def _slots(value):
    """The slots as schedule tuples (see loa/schedule.py), or None if any is bad, two share
    an id, or two overlap."""
    if not isinstance(value, list) or len(value) > MAX_SLOTS:
        return None
    slots = []
    for i in range(len(value)):
        raw = value[i]
        value[i] = None  # the decoded JSON of a slot can go once its tuple is made
        if not isinstance(raw, dict):
            return None
        sid = _get(raw, "id", "slot_id")
        start = _clock_time(_get(raw, "s", "start"))
        end = _clock_time(_get(raw, "e", "end"))
        days = _bounded(_get(raw, "d", "days", 127), 1, 127)
        url = _get(raw, "u", "url")
        priority = _get(raw, "p", "priority", "normal")
        first = _get(raw, "f", "valid_from", None)
        last = _get(raw, "t", "valid_to", None)
        volume = _get(raw, "vol", "volume", None)
        first = FOREVER_BEFORE if first is None else _date(first)
        last = FOREVER_AFTER if last is None else _date(last)
        volume = NO_VOLUME if volume is None else _bounded(volume, 0, 100)
        if (not _code(sid, SLOT_ID_MAX) or start is None or end is None or days is None
                or not _stream_url(url) or not isinstance(priority, str) or priority not in PRIORITIES
                or first is None or last is None or volume is None or end <= start or last < first):
            return None
        slots.append((sid, start, end, days, url, PRIORITIES.index(priority), first, last, volume))
    for i, a in enumerate(slots):
        for b in slots[i + 1:]:
            if a[0] == b[0]:
                return None
            if (a[3] & b[3] and max(a[6], b[6]) <= min(a[7], b[7])
                    and a[1] < b[2] and b[1] < a[2]):
                return None
    return slots


class Ledger:
    """The ids and final outcomes of the last REMEMBERED commands, on flash. A play being
    carried out is kept as "accepted"; if the power goes before its outcome, it is remembered
    as failed ("interrupted") rather than ever started a second time."""

    def __init__(self, path="commands.json", log=print):
        self.path = path
        self.log = log
        stored = files.read_json(path) or {}
        entries = []
        for entry in stored.get("c") or ():
            if isinstance(entry, list) and len(entry) == 3 and _code(entry[0], ID_MAX):
                if entry[1] == "accepted":
                    entry[1], entry[2] = "failed", "interrupted"
                entries.append(entry)
        self.entries = entries[-REMEMBERED:]

    def get(self, command_id):
        """[id, status, why] of a remembered command, or None."""
        for entry in self.entries:
            if entry[0] == command_id:
                return entry
        return None

    def remember(self, command_id, status, why=None):
        """Record an outcome and write the ledger (atomically). Raises OSError."""
        entry = self.get(command_id)
        if entry is None:
            self.entries.append([command_id, status, why])
            if len(self.entries) > REMEMBERED:
                self.entries.pop(0)
        else:
            entry[1], entry[2] = status, why
        files.write_json(self.path, {"c": self.entries})
