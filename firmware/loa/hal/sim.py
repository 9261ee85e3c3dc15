# A simulated receiver board for the unix port: amplifier, volume and sensors are values in
# memory (start values from the optional "sim.json" beside the config), the network is the
# host's, the watchdog is a thread that ends the process like a hardware reset would.
#
# Planned stop: a line "stop" on standard input asks for a clean shutdown (the goodbye). A
# line "heap" prints the heap's state (after a collection): free bytes and the largest block;
# a line "sim" reads sim.json again.
# Reset cause: the watchdog leaves "reset_cause" behind for the next start; without it a
# start counts as "power_on".
#
# For the tests, sim.json may also say "power_loss_at" (an update's checkpoint where the
# process dies as at a power cut; "downloading" once "power_loss_pct" percent, 50 by default,
# is in), "via" (a loopback port: every connection but the broker's goes there, to a test's
# HTTP relay that cuts or corrupts a download) and "ppp_drop" (the PPP session of a board with
# a modem drops, noticed at the next connection lost).

import os
import sys
import time

import asyncio
from loa import files
from loa.hal import RESET_CAUSES, Board

# The simulated decoder's input FIFO: the VS1053's is 2 KiB.
SIM_FIFO = 2048
# Bitrate the simulated decoder plays at when the stream's is unknown.
SIM_DEFAULT_KBPS = 128

_SIM_DEFAULTS = {
    "temp": 38.5,     # degrees C
    "vin": 12.1,      # volts
    "csq": 20,        # AT+CSQ
    "amp_fault": False,
}


def _read_text(path):
    try:
        with open(path) as f:
            return f.read(64).strip()
    except OSError:
        return None


class SimBoard(Board):
    name = "sim"

    def __init__(self, cfg):
        super().__init__(cfg)
        values = dict(_SIM_DEFAULTS)
        values.update(files.read_json("sim.json") or {})
        self.values = values
        self._amp = False
        self._wdt_ms = 0
        self._fed = 0
        cause = _read_text("reset_cause")
        if cause is not None:
            try:
                os.remove("reset_cause")
            except OSError:
                pass
        self._reset_cause = cause if cause in RESET_CAUSES else "power_on"
        self._stdin_task = None
        self._direct = None  # asyncio.open_connection, once routed through "via"
        # The simulated decoder: a FIFO that drains at the stream's bitrate in real time.
        self.audio_rate = 0        # bytes per second while open, 0 when closed
        self.audio_fifo = 0        # bytes in the FIFO
        self.audio_bytes = 0       # bytes accepted since boot
        self.audio_starved = 0     # times the FIFO ran empty while open after data came
        self._audio_t = time.ticks_ms()
        # A test may attach a scripted modem (write(), async readline()): then cfg "link"
        # "ppp" dials through it; without one the link is the host's network.
        self.modem = None
        self.ppp_active = False
        self.ppp_carrier = True    # a test sets it False to drop the PPP session
        self.power_cycles = 0

    def start(self):
        """Start the stdin reader (called from inside the event loop)."""
        self._stdin_task = asyncio.create_task(self._read_stdin())
        self._route()

    def _route(self):
        if "via" not in self.values or self._direct is not None:
            return
        direct = self._direct = asyncio.open_connection
        broker = (self.cfg["host"], self.cfg["port"])

        async def open_connection(host, port, **kw):
            via = self.values.get("via")
            if via and (host, port) != broker:
                host, port = "127.0.0.1", via
            return await direct(host, port, **kw)

        asyncio.open_connection = open_connection

    async def _read_stdin(self):
        reader = asyncio.StreamReader(sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            line = line.strip()
            if line == b"stop":
                self.stop_requested = True
            elif line == b"sim":  # sim.json changed: read it again
                self.values.update(files.read_json("sim.json") or {})
                if self.values.pop("ppp_drop", False):
                    self.ppp_carrier = False
                self._route()
            elif line == b"heap":
                import gc
                import micropython

                gc.collect()
                micropython.mem_info()
                micropython.qstr_info()

    # -- audio output -------------------------------------------------------------------------

    def set_amp(self, on):
        self._amp = bool(on)

    def amp_state(self):
        if not self._amp:
            return "off"
        return "fault" if self.values["amp_fault"] else "on"

    def audio_open(self, kbps):
        self.audio_rate = (kbps or SIM_DEFAULT_KBPS) * 1000 // 8
        self.audio_fifo = 0
        self._audio_t = time.ticks_ms()

    def _drain(self):
        now = time.ticks_ms()
        played = time.ticks_diff(now, self._audio_t) * self.audio_rate // 1000
        if played <= 0:
            return
        # Advance the clock only by the time those whole bytes took, keeping the remainder.
        self._audio_t = time.ticks_add(self._audio_t, played * 1000 // self.audio_rate)
        if played >= self.audio_fifo and self.audio_fifo:
            self.audio_starved += 1
        self.audio_fifo = max(0, self.audio_fifo - played)

    def audio_write(self, buf, n):
        if not self.audio_rate:
            raise OSError("audio: decoder not open")
        self._drain()
        took = min(n, SIM_FIFO - self.audio_fifo)
        self.audio_fifo += took
        self.audio_bytes += took
        return took

    def audio_close(self):
        self.audio_rate = 0
        self.audio_fifo = 0

    # -- sensors ------------------------------------------------------------------------------

    def temperature(self):
        return self.values["temp"]

    def supply_voltage(self):
        return self.values["vin"]

    def reset_cause(self):
        return self._reset_cause

    # -- watchdog -----------------------------------------------------------------------------

    def watchdog_start(self, timeout_ms):
        import _thread

        self._wdt_ms = timeout_ms
        self._fed = time.ticks_ms()
        # Prepared here: the watchdog thread must not allocate (the unix port's threads share
        # the heap without a lock).
        command = "echo watchdog > reset_cause; kill -9 $PPID"
        _thread.start_new_thread(self._watch, (command,))

    def _watch(self, command):
        while True:
            time.sleep_ms(100)
            if time.ticks_diff(time.ticks_ms(), self._fed) > self._wdt_ms:
                os.system(command)
                return

    def watchdog_feed(self):
        self._fed = time.ticks_ms()

    def reset(self):
        sys.exit(0)

    def checkpoint(self, name, pct=100):
        # "power_loss_at" in sim.json: the process dies there as at a power cut.
        if self.values.get("power_loss_at") == name and pct >= self.values.get("power_loss_pct", 50):
            print("sim: power loss at", name)
            os.system("kill -9 $PPID")
            time.sleep(5)

    # -- network link: the host's network, or PPP through a test's scripted modem ----------

    def _new_link(self):
        from loa import link

        if self.modem is None:
            return link.HostLink()
        return link.make(self.cfg, self)

    def signal_csq(self):
        csq = super().signal_csq()
        return self.values["csq"] if csq is None else csq

    def modem_port(self):
        if self.modem is None:
            raise OSError("no modem attached to the simulated board")
        return self.modem

    def ppp_start(self):
        self.ppp_active = True
        self.ppp_carrier = True

    def ppp_connected(self):
        return self.ppp_active and self.ppp_carrier

    def ppp_stop(self):
        self.ppp_active = False

    async def modem_power_cycle(self):
        self.power_cycles += 1
        power_cycle = getattr(self.modem, "power_cycle", None)
        if power_cycle is not None:
            power_cycle()
