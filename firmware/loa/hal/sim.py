# A simulated receiver board for the unix port: amplifier, volume and sensors are values in
# memory (start values from the optional "sim.json" beside the config), the network is the
# host's, the watchdog is a thread that ends the process like a hardware reset would.
#
# Planned stop: a line "stop" on standard input asks for a clean shutdown (the goodbye).
# Reset cause: the watchdog leaves "reset_cause" behind for the next start; without it a
# start counts as "power_on".

import os
import sys
import time

import asyncio
from loa import files
from loa.hal import RESET_CAUSES, Board

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

    def start(self):
        """Start the stdin reader (called from inside the event loop)."""
        self._stdin_task = asyncio.create_task(self._read_stdin())

    async def _read_stdin(self):
        reader = asyncio.StreamReader(sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.strip() == b"stop":
                self.stop_requested = True

    # -- audio output -------------------------------------------------------------------------

    def set_amp(self, on):
        self._amp = bool(on)

    def amp_state(self):
        if not self._amp:
            return "off"
        return "fault" if self.values["amp_fault"] else "on"

    # -- sensors ------------------------------------------------------------------------------

    def temperature(self):
        return self.values["temp"]

    def supply_voltage(self):
        return self.values["vin"]

    def reset_cause(self):
        return self._reset_cause

    def signal_csq(self):
        return self.values["csq"]

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

    # -- network link: the host's network -----------------------------------------------------

    async def link_up(self):
        return True
