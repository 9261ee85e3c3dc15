# The real receiver board: an ESP32 with a SIMCom 4G modem on UART1, an amplifier relay,
# a current sense on the amplifier supply and a divider on the 12 V input. Pin numbers and
# scale factors are the defaults below, overridable by a "board" dict in config.json.
# (Not runnable on the unix port; type-checked against micropython-esp32-stubs.)

import asyncio
import esp32
import machine
import network
from machine import ADC, UART, WDT, Pin

from loa.hal import Board
from loa.modem import Modem

PINS = {
    "amp": 25,            # relay driver, high = amplifier on
    "amp_sense": 34,      # ADC: amplifier current shunt amplifier output
    "amp_sense_uv": 100000,  # below this (microvolts) with the relay on: amplifier fault
    "vin": 35,            # ADC: 12 V input through a divider
    "vin_scale": 11.0,    # divider ratio (100k over 10k)
    "modem_tx": 17,
    "modem_rx": 16,
    "modem_pwr": 4,       # modem PWRKEY (through a transistor, high = pressed)
    "modem_baud": 115200,
}

_RESET = {
    machine.PWRON_RESET: "power_on",
    machine.HARD_RESET: "hard",
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


class Esp32Board(Board):
    name = "esp32"

    def __init__(self, cfg):
        super().__init__(cfg)
        pins = dict(PINS)
        pins.update(cfg.get("board") or {})
        self.pins = pins
        self._amp = Pin(pins["amp"], Pin.OUT, value=0)
        self._amp_sense = ADC(Pin(pins["amp_sense"]), atten=ADC.ATTN_11DB)
        self._vin = ADC(Pin(pins["vin"]), atten=ADC.ATTN_11DB)
        self._reset_cause = _RESET.get(machine.reset_cause(), "unknown")
        self._wdt = None
        self._uart = None
        self._modem = None
        self._ppp = None
        self._wlan = None

    # -- audio output -------------------------------------------------------------------------

    def set_amp(self, on):
        self._amp.value(1 if on else 0)

    def amp_state(self):
        if not self._amp.value():
            return "off"
        if self._amp_sense.read_uv() < self.pins["amp_sense_uv"]:
            return "fault"
        return "on"

    # -- sensors ------------------------------------------------------------------------------

    def temperature(self):
        # The chip's own sensor: esp32.mcu_temperature() (C) on S2/S3/C3, raw_temperature()
        # (F) on the original ESP32.
        read = getattr(esp32, "mcu_temperature", None)
        if read is not None:
            return float(read())
        raw = getattr(esp32, "raw_temperature", None)
        if raw is not None:
            return (raw() - 32) / 1.8
        return None

    def supply_voltage(self):
        return self._vin.read_uv() * self.pins["vin_scale"] / 1000000

    def reset_cause(self):
        return self._reset_cause

    def signal_csq(self):
        return self._modem.csq if self._modem is not None else None

    # -- watchdog -----------------------------------------------------------------------------

    def watchdog_start(self, timeout_ms):
        self._wdt = WDT(timeout=timeout_ms)

    def watchdog_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self):
        machine.reset()

    # -- network link -------------------------------------------------------------------------

    async def link_up(self):
        if self.link_is_up():
            return True
        if self.cfg["link"] == "wifi":
            return await self._wifi_up()
        return await self._ppp_up()

    async def _wifi_up(self):
        wlan = self._wlan or network.WLAN(network.WLAN.IF_STA)
        self._wlan = wlan
        wlan.active(True)
        wlan.connect(self.cfg["wifi_ssid"], self.cfg["wifi_password"])
        for _ in range(60):
            if wlan.isconnected():
                return True
            await asyncio.sleep_ms(500)
        raise OSError("wifi: not connected")

    async def _ppp_up(self):
        pins = self.pins
        if self._uart is None:
            self._uart = UART(1, baudrate=pins["modem_baud"], tx=pins["modem_tx"], rx=pins["modem_rx"])
        port = _UartPort(self._uart)
        self._modem = Modem(port)
        await self._modem.attach(self.cfg["apn"], self.cfg["sim_pin"])
        await self._modem.dial()
        ppp = network.PPP(self._uart)
        self._ppp = ppp
        ppp.active(True)
        ppp.connect()
        for _ in range(60):
            if ppp.isconnected():
                return True
            await asyncio.sleep_ms(500)
        raise OSError("ppp: no IP address")

    async def link_down(self):
        if self._ppp is not None:
            self._ppp.active(False)
            self._ppp = None
        if self._wlan is not None:
            self._wlan.disconnect()

    def link_is_up(self):
        if self._ppp is not None:
            return self._ppp.isconnected()
        if self._wlan is not None:
            return self._wlan.isconnected()
        return False

    async def modem_power_cycle(self):
        """Press PWRKEY long enough to switch the modem off, then on again."""
        key = Pin(self.pins["modem_pwr"], Pin.OUT, value=0)
        for hold_ms in (3000, 1000):  # off, then on
            key.value(1)
            await asyncio.sleep_ms(hold_ms)
            key.value(0)
            await asyncio.sleep_ms(5000)


class _UartPort:
    """The modem layer's port over a UART: write() and an awaitable readline()."""

    def __init__(self, uart):
        self._uart = uart
        self._reader = asyncio.StreamReader(uart)

    def write(self, data):
        self._uart.write(data)

    async def readline(self):
        return await self._reader.readline()
