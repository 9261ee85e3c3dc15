# The board seam: everything the application needs from the hardware, and nothing else.
# hal/esp32.py drives a real receiver board, hal/sim.py simulates one on the unix port.
# Tests replace only this seam: the broker, the network stack and the files are real.

import gc
import sys
from time import ticks_diff, ticks_ms

# The reset causes of docs/protocol.md ("rst").
RESET_CAUSES = ("power_on", "hard", "watchdog", "deepsleep", "soft", "brownout", "unknown")


class Board:
    """Base class: the parts every board shares (the clock, the volume, the link). A board
    also has, each of its own (comments only, to keep the heap the methods would take):

    audio     set_amp(on); amp_state(): "on", "off" or "fault" (commanded on, but no current
              drawn); audio_open(kbps): the MP3 decoder made ready for a stream of ``kbps``
              (None if unknown); audio_write(buf, n): offer the first ``n`` bytes of ``buf``,
              returns how many the decoder took now (0 while its input FIFO is full: the
              decoder paces playback); audio_close(): end of the stream, the decoder may stop
    sensors   temperature() (degrees C), supply_voltage() (volts), None if it cannot tell;
              reset_cause(): one of RESET_CAUSES, why the board last reset
    watchdog  watchdog_start(timeout_ms), watchdog_feed(); reset(): hard reset, never returns
    4G modem  modem_port(): its serial line, write(bytes) and async readline(); ppp_start():
              PPP over that line (after the modem answered CONNECT); ppp_connected();
              ppp_stop(); async modem_power_cycle(): off and on with its PWRKEY. A board
              without a modem raises OSError from modem_port() and ppp_start()
    """

    name = "base"

    def __init__(self, cfg):
        self.cfg = cfg
        self._ms = 0
        self._last = ticks_ms()
        self._volume = 50
        # Set when a planned stop is asked for (the application then says goodbye).
        self.stop_requested = False
        self.link = None  # made on first use, from cfg["link"]

    # -- clock --------------------------------------------------------------------------------

    def uptime_ms(self):
        """Milliseconds since boot, never wrapping (ticks_ms wraps after days; this
        accumulates its differences, and is called at least every second by the supervisor)."""
        now = ticks_ms()
        self._ms += ticks_diff(now, self._last)
        self._last = now
        return self._ms

    def unix_time(self):
        """Wall clock, Unix seconds (may be unset or skewed: the service reports the skew)."""
        import time

        t = time.time()
        if time.gmtime(0)[0] == 2000:  # ports with the 2000 epoch
            t += 946684800
        return int(t)

    # -- volume, memory ---------------------------------------------------------------------

    def set_volume(self, level):
        self._volume = max(0, min(100, int(level)))

    def volume(self):
        return self._volume

    def free_memory(self):
        gc.collect()
        return gc.mem_free()

    # -- network link: loa/link.py, chosen by cfg["link"] ---------------------------------

    def link_layer(self):
        """The data link (loa/link.py), made on first use from cfg["link"]."""
        if self.link is None:
            self.link = self._new_link()
        return self.link

    def _new_link(self):
        from loa import link

        return link.make(self.cfg, self)

    async def link_up(self):
        """Bring the data link up (4G PPP, Wi-Fi, or nothing on the host). Raises OSError if
        it cannot."""
        return await self.link_layer().up()

    async def link_down(self):
        await self.link_layer().down()

    def link_is_up(self):
        return self.link_layer().is_up()

    def signal_csq(self):
        """Last AT+CSQ value (0..31, 99 unknown), or None without a modem."""
        return self.link_layer().signal_csq()

    def checkpoint(self, name, pct=100):
        """A step of an update was reached (loa/update.py; ``pct`` of the download): the
        simulated board cuts the power there when told to; a real board does nothing."""

    def ssl_context(self, ca_path, verify):
        """An SSLContext for the broker connection (or a stream over https)."""
        from loa import tls, unload

        try:
            return tls.context(ca_path, verify)
        finally:
            del tls
            unload("tls")  # needed again only for the next TLS connection


def make(cfg):
    """The board this firmware runs on."""
    if sys.platform == "esp32":
        from loa.hal.esp32 import Esp32Board

        return Esp32Board(cfg)
    from loa.hal.sim import SimBoard

    return SimBoard(cfg)
