# The broadcast schedule (docs/protocol.md "Schedule and the receiver's clock"): up to 24
# slots in the station's local time (UTC + tz minutes), stored on flash and run by the
# receiver's own clock, with or without a connection. The slots live in arrays allocated once
# for MAX_SLOTS, so that replacing a schedule never fragments the heap.
#
# A slot on file and in memory: (id, start s, end s, days mask, url, priority rank,
# valid-from day, valid-to day, volume), times in seconds after local midnight, days as day
# numbers since 1970-01-01, FOREVER_* when open-ended, NO_VOLUME when the slot sets none.

from array import array

from micropython import const

from loa import files

MAX_SLOTS = const(24)
DAY_S = const(86400)
# Day numbers of 0001-01-01 and 9999-12-31 (the range of a protocol date): "no limit".
FOREVER_BEFORE = const(-719162)
FOREVER_AFTER = const(2932896)
NO_VOLUME = const(-1)
# 24 slots with 256-character URLs and their other fields stay under this.
FILE_LIMIT = const(9216)


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def local_day(unix_s, tz_min):
    """The local day number of a Unix time."""
    return (unix_s + tz_min * 60) // DAY_S


class Schedule:
    def __init__(self, path="schedule.json", log=print):
        self.path = path
        self.log = log
        self.version = None   # None: no schedule received yet
        self.tz = 420
        self.count = 0
        self.ids = [""] * MAX_SLOTS
        self.urls = [""] * MAX_SLOTS
        self.starts = array("i", [0] * MAX_SLOTS)
        self.ends = array("i", [0] * MAX_SLOTS)
        self.days = array("i", [0] * MAX_SLOTS)
        self.ranks = array("i", [0] * MAX_SLOTS)
        self.froms = array("i", [0] * MAX_SLOTS)
        self.tos = array("i", [0] * MAX_SLOTS)
        self.volumes = array("i", [0] * MAX_SLOTS)
        self.shed = False     # the URLs were let go (shed_urls): load() brings them back

    def shed_urls(self):
        """Let the slots' URLs go (up to 6 KiB of strings), to make room for decoding a large
        command; the schedule does not run until load() has read them back from flash."""
        if self.count:
            for i in range(MAX_SLOTS):
                self.urls[i] = ""
            self.shed = True

    def load(self):
        """The schedule stored on flash, if there is a readable one."""
        stored = files.read_json(self.path, FILE_LIMIT)
        if stored is None:
            if self.shed:  # its URLs are gone and cannot be read back: nothing to run
                self.shed = False
                self.count = 0
            return
        try:
            self._set(stored["ver"], stored["tz"], stored["slots"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self.log("schedule: ignoring an unreadable", self.path, repr(exc))
            self.version = None
            self.count = 0

    def store(self, version, tz, slots):
        """Write a new schedule to flash (atomically), then run it. Raises OSError."""
        files.write_json(self.path, {"ver": version, "tz": tz, "slots": slots})
        self._set(version, tz, slots)

    def _set(self, version, tz, slots):
        if not isinstance(version, int) or not isinstance(tz, int) or len(slots) > MAX_SLOTS:
            raise ValueError("not a schedule")
        self.count = 0  # nothing runs from a half-filled table
        for i, slot in enumerate(slots):
            sid, start, end, days, url, rank, first, last, volume = slot
            self.ids[i] = sid
            self.urls[i] = url
            self.starts[i] = start
            self.ends[i] = end
            self.days[i] = days
            self.ranks[i] = rank
            self.froms[i] = first
            self.tos[i] = last
            self.volumes[i] = volume
        for i in range(len(slots), MAX_SLOTS):
            self.ids[i] = self.urls[i] = ""
        self.version = version
        self.tz = tz
        self.count = len(slots)
        self.shed = False

    def current(self, unix_s):
        """Index of the slot in force at ``unix_s`` (slots never overlap), or -1."""
        local = unix_s + self.tz * 60
        day = local // DAY_S
        second = local - day * DAY_S
        weekday_bit = 1 << ((day + 3) % 7)  # 1970-01-01 was a Thursday; bit 0 is Monday
        for i in range(self.count):
            if (self.days[i] & weekday_bit and self.froms[i] <= day <= self.tos[i]
                    and self.starts[i] <= second < self.ends[i]):
                return i
        return -1
