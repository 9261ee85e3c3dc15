# The real receiver board: an ESP32 with a SIMCom 4G modem on UART1, a VS1053 MP3 decoder on
# SPI, an amplifier relay, a current sense on the amplifier supply and a divider on the 12 V
# input. Pin numbers and scale factors are the defaults below, overridable by a "board" dict
# in config.json. (Not runnable on the unix port; type-checked against micropython-esp32-stubs.)

import asyncio
import esp32
import machine
import network
from machine import ADC, SPI, UART, WDT, Pin
from time import sleep_ms

from micropython import const

from loa.hal import Board

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
    "spi": 2,             # VS1053 on the VSPI bus
    "spi_sck": 18,
    "spi_mosi": 23,
    "spi_miso": 19,
    "vs_xcs": 5,          # VS1053 command interface select (SCI), low = selected
    "vs_xdcs": 32,        # VS1053 data interface select (SDI), low = selected
    "vs_dreq": 27,        # VS1053 DREQ: high = room for 32 more bytes
    "vs_reset": 26,       # VS1053 XRESET, low = reset
}

# VS1053 SCI registers and values (VLSI VS1053b datasheet, section 9.6).
_SCI_WRITE = const(0x02)
_SCI_MODE = const(0x00)
_SCI_CLOCKF = const(0x03)
_SCI_VOL = const(0x0B)
_SM_SDINEW = const(0x0800)   # native SPI modes (xDCS used for data)
_SM_RESET = const(0x0004)
# CLOCKF: SC_MULT 3.5x on the 12.288 MHz crystal, the multiplier MP3 decoding needs.
_CLOCKF_3_5X = const(0x8800)
# SCI writes are slow (CLKI/4 before CLOCKF is set); SDI may go to CLKI/7 after it.
_SPI_SLOW_HZ = const(1000000)
_SPI_FAST_HZ = const(5000000)
# The decoder takes data in blocks of 32 bytes whenever DREQ is high.
_SDI_BLOCK = const(32)
# Zero bytes sent at the end of a stream so the decoder plays out its last frame.
_END_FILL = const(2052)

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
        self._ppp = None
        self._spi = None
        self._audio_open = False

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

    # -- watchdog -----------------------------------------------------------------------------

    def watchdog_start(self, timeout_ms):
        self._wdt = WDT(timeout=timeout_ms)

    def watchdog_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def reset(self):
        machine.reset()

    # -- audio: VS1053 MP3 decoder ------------------------------------------------------------

    def _vs_init(self):
        pins = self.pins
        self._xcs = Pin(pins["vs_xcs"], Pin.OUT, value=1)
        self._xdcs = Pin(pins["vs_xdcs"], Pin.OUT, value=1)
        self._dreq = Pin(pins["vs_dreq"], Pin.IN)
        self._vs_reset = Pin(pins["vs_reset"], Pin.OUT, value=0)
        self._spi = SPI(pins["spi"], baudrate=_SPI_SLOW_HZ, sck=Pin(pins["spi_sck"]),
                        mosi=Pin(pins["spi_mosi"]), miso=Pin(pins["spi_miso"]))
        self._vs_cmd = bytearray(4)

    def _sci_write(self, register, value):
        spi = self._spi
        assert spi is not None
        for _ in range(100):  # DREQ low while the decoder is busy; at most a few ms
            if self._dreq.value():
                break
            sleep_ms(1)
        cmd = self._vs_cmd
        cmd[0] = _SCI_WRITE
        cmd[1] = register
        cmd[2] = value >> 8
        cmd[3] = value & 0xFF
        self._xcs.value(0)
        spi.write(cmd)
        self._xcs.value(1)

    def _apply_volume(self):
        # SCI_VOL: attenuation in 0.5 dB steps per channel; 0 is loudest, 0xFE silent.
        level = self.volume()
        att = 0xFE if level == 0 else (100 - level)  # 100 steps of 0.5 dB: 50 dB range
        self._sci_write(_SCI_VOL, (att << 8) | att)

    def set_volume(self, level):
        super().set_volume(level)
        if self._spi is not None:
            self._apply_volume()

    def audio_open(self, kbps):
        # The VS1053 finds the bitrate in the frame headers itself; kbps is not needed.
        if self._spi is None:
            self._vs_init()
        spi = self._spi
        assert spi is not None
        self._vs_reset.value(0)
        sleep_ms(2)
        self._vs_reset.value(1)
        sleep_ms(5)
        spi.init(baudrate=_SPI_SLOW_HZ)
        self._sci_write(_SCI_MODE, _SM_SDINEW | _SM_RESET)
        sleep_ms(2)
        self._sci_write(_SCI_CLOCKF, _CLOCKF_3_5X)
        sleep_ms(2)
        spi.init(baudrate=_SPI_FAST_HZ)
        self._apply_volume()
        self._audio_open = True

    def audio_write(self, buf, n):
        spi = self._spi
        if spi is None or not self._audio_open:
            raise OSError("audio: decoder not open")
        view = memoryview(buf)
        done = 0
        while done < n and self._dreq.value():
            block = min(_SDI_BLOCK, n - done)
            self._xdcs.value(0)
            spi.write(view[done:done + block])
            self._xdcs.value(1)
            done += block
        return done

    def audio_close(self):
        if self._spi is None or not self._audio_open:
            return
        self._audio_open = False
        zeros = bytes(_SDI_BLOCK)
        left = _END_FILL
        for _ in range(200):  # a few ms of DREQ waits at most
            if left <= 0:
                break
            left -= self.audio_write_raw(zeros)
            sleep_ms(1)
        self._sci_write(_SCI_MODE, _SM_SDINEW | _SM_RESET)  # soft reset: silence

    def audio_write_raw(self, block):
        spi = self._spi
        if spi is None or not self._dreq.value():
            return 0
        self._xdcs.value(0)
        spi.write(block)
        self._xdcs.value(1)
        return len(block)

    # -- the 4G modem's hardware (loa.ppp.PppLink drives it) --------------------------------------

    def _modem_uart(self):
        pins = self.pins
        if self._uart is None:
            self._uart = UART(1, baudrate=pins["modem_baud"], tx=pins["modem_tx"], rx=pins["modem_rx"])
        return self._uart

    def modem_port(self):
        return _UartPort(self._modem_uart())

    def ppp_start(self):
        ppp = network.PPP(self._modem_uart())
        self._ppp = ppp
        ppp.active(True)
        ppp.connect()

    def ppp_connected(self):
        return self._ppp is not None and self._ppp.isconnected()

    def ppp_stop(self):
        if self._ppp is not None:
            self._ppp.active(False)
            self._ppp = None

    def network_time(self):
        """The modem's network time (AT+CCLK? at link-up, loa.clock's fallback), or None."""
        read = getattr(self.link_layer(), "network_time", None)
        return read() if read is not None else None

    async def modem_power_cycle(self):
        """Press PWRKEY long enough to switch the modem off, then on again."""
        self.ppp_stop()
        key = Pin(self.pins["modem_pwr"], Pin.OUT, value=0)
        for hold_ms in (3000, 1000):  # off (>= 2.5 s on the A76xx), then on (>= 0.5 s)
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
