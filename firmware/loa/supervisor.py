# The watchdog is fed by the supervisor only, and only while every registered task has
# reported in within its own limit. A task that hangs (or an event loop that is blocked)
# therefore ends in a watchdog reset, which the next boot reports as "rst":"watchdog".

import asyncio
from time import ticks_diff, ticks_ms

# How often the supervisor checks (and feeds). Much shorter than any watchdog timeout.
CHECK_MS = 1000


class Supervisor:
    def __init__(self, board, timeout_ms, log=print):
        self.board = board
        self.timeout_ms = timeout_ms
        self.log = log
        self._tasks = {}  # name -> [last report ticks, limit ms]
        self.stalled = None

    def register(self, name, limit_ms):
        self._tasks[name] = [ticks_ms(), limit_ms]

    def unregister(self, name):
        self._tasks.pop(name, None)

    def alive(self, name):
        entry = self._tasks.get(name)
        if entry is not None:
            entry[0] = ticks_ms()

    def healthy(self):
        now = ticks_ms()
        for name in self._tasks:
            last, limit = self._tasks[name]
            if ticks_diff(now, last) > limit:
                return name
        return None

    async def run(self):
        self.board.watchdog_start(self.timeout_ms)
        while True:
            self.board.uptime_ms()  # keeps the non-wrapping clock up to date
            stalled = self.healthy()
            if stalled is None:
                self.board.watchdog_feed()
            elif stalled != self.stalled:
                self.log("supervisor: task", stalled, "stalled; the watchdog will reset the board")
            self.stalled = stalled
            await asyncio.sleep_ms(CHECK_MS)
