# The receiver's wall clock. An ESP32's RTC starts at its epoch after power-on and drifts; the
# schedule and command expiry need real time. So the clock is synced by SNTP (RFC 4330) or,
# failing that, the modem's network time, and from then on runs as the reference time taken
# at the sync plus the board's never-wrapping uptime. Nothing here sets the board's RTC: the
# correction lives in this layer (the unix port cannot set the host's clock either).

# Skews beyond the 32-bit range of the telemetry field are reported at its bound.
SKEW_LIMIT = 0x7FFFFFFF


class Clock:
    def __init__(self, board):
        self.board = board
        self.synced_up_ms = None   # uptime of the last sync; None: never synced since boot
        self.base_ms = 0           # reference Unix time (ms) at synced_up_ms
        self.skew_ms = None        # this clock minus the reference at the last sync
        self.source = None         # "ntp" or "modem"

    @property
    def synced(self):
        return self.synced_up_ms is not None

    def unix_ms(self):
        if self.synced_up_ms is None:
            board = self.board
            fine = getattr(board, "unix_time_ms", None)
            return fine() if fine is not None else board.unix_time() * 1000
        return self.base_ms + self.board.uptime_ms() - self.synced_up_ms

    def unix_time(self):
        return self.unix_ms() // 1000

    def since_sync(self):
        """Whole seconds since the last sync, or None."""
        if self.synced_up_ms is None:
            return None
        return (self.board.uptime_ms() - self.synced_up_ms) // 1000

    def correct(self, local_ms, up_ms, reference_ms, source):
        """Set the clock from ``reference_ms``, the true time when this clock read
        ``local_ms`` at uptime ``up_ms``. Returns the skew found (ms)."""
        skew = max(-SKEW_LIMIT, min(SKEW_LIMIT, local_ms - reference_ms))
        self.base_ms = reference_ms
        self.synced_up_ms = up_ms
        self.skew_ms = skew
        self.source = source
        return skew

    async def sync_ntp(self, host, port=123):
        """Ask an SNTP server (loa/sntp.py, loaded for the sync and let go after it); set the
        clock from its answer. Returns the skew (ms); raises OSError if no valid answer came."""
        from loa import sntp, unload

        try:
            return await sntp.sync(self, host, port)
        finally:
            del sntp
            unload("sntp")

    def sync_modem(self):
        """Set the clock from the modem's network time (whole seconds), if the board has one.
        Returns the skew (ms) or None."""
        network_time = getattr(self.board, "network_time", None)
        reference = network_time() if network_time is not None else None
        if reference is None:
            return None
        return self.correct(self.unix_ms(), self.board.uptime_ms(), int(reference) * 1000, "modem")
