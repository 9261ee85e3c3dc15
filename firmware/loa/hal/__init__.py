# The board seam: everything the application needs from the hardware, and nothing else.
# hal/esp32.py drives a real receiver board, hal/sim.py simulates one on the unix port.
# Tests replace only this seam: the broker, the network stack and the files are real.

import gc
import sys
from time import ticks_diff, ticks_ms

# The reset causes of docs/protocol.md ("rst").
RESET_CAUSES = ("power_on", "hard", "watchdog", "deepsleep", "soft", "brownout", "unknown")


class Board:
    """Base class: the interface, with the parts every board shares (the clock)."""

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

    # -- audio output -------------------------------------------------------------------------

    def set_amp(self, on):
        raise NotImplementedError

    def amp_state(self):
        """"on", "off", or "fault" (commanded on, but no current drawn)."""
        raise NotImplementedError

    def set_volume(self, level):
        self._volume = max(0, min(100, int(level)))

    def audio_open(self, kbps):
        """Make the MP3 decoder ready for a stream of ``kbps`` (None if unknown)."""
        raise NotImplementedError

    def audio_write(self, buf, n):
        """Offer the first ``n`` bytes of ``buf`` to the decoder; returns how many it took now
        (0 while its input FIFO is full: the decoder paces playback)."""
        raise NotImplementedError

    def audio_close(self):
        """End of the stream: the decoder may stop (and be silent)."""

    def volume(self):
        return self._volume

    # -- sensors --------------------------------------------------------------------------------

    def temperature(self):
        """Degrees Celsius, or None if the board cannot tell."""
        return None

    def supply_voltage(self):
        """Volts, or None if the board cannot tell."""
        return None

    def reset_cause(self):
        """One of RESET_CAUSES: why the board last reset."""
        return "unknown"

    def free_memory(self):
        gc.collect()
        return gc.mem_free()

    # -- watchdog -----------------------------------------------------------------------------

    def watchdog_start(self, timeout_ms):
        raise NotImplementedError

    def watchdog_feed(self):
        raise NotImplementedError

    def reset(self):
        """Hard reset (never returns)."""
        raise NotImplementedError

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

    # -- the 4G modem's hardware (used by loa.link.PppLink) -------------------------------

    def modem_port(self):
        """The modem's serial line: write(bytes) and async readline()."""
        raise OSError("this board has no modem")

    def ppp_start(self):
        """Run PPP over the modem's serial line (after the modem answered CONNECT)."""
        raise OSError("this board has no modem")

    def ppp_connected(self):
        return False

    def ppp_stop(self):
        pass

    async def modem_power_cycle(self):
        """Switch the modem off and on again with its PWRKEY."""
        raise OSError("this board has no modem")

    def ssl_context(self, ca_path, verify):
        """An SSLContext for the broker connection."""
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            with open(ca_path, "rb") as f:
                ca = f.read()
            ctx.load_verify_locations(cadata=pem_to_der(ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def pem_to_der(data):
    """The first certificate of a PEM file as DER (some mbedTLS builds parse only DER);
    DER input is returned as it is."""
    if not data.startswith(b"-----"):
        return data
    import binascii

    lines = data.split(b"\n")
    body = b""
    inside = False
    for line in lines:
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            inside = True
        elif line.startswith(b"-----END"):
            break
        elif inside:
            body += line
    return binascii.a2b_base64(body)


def make(cfg):
    """The board this firmware runs on."""
    if sys.platform == "esp32":
        from loa.hal.esp32 import Esp32Board

        return Esp32Board(cfg)
    from loa.hal.sim import SimBoard

    return SimBoard(cfg)
