# The data link under the MQTT session: 4G over PPP, Wi-Fi on a bench, or the host's network
# on the unix port. Chosen by the config key "link": "ppp", "wifi", anything else the host.
#
# Every link has the same small interface: async up() (raises OSError if it cannot),
# async down(), is_up(), signal_csq() (0..31, 99 unknown, None without a radio), and
# on_event(kind, detail), set by the application to report events such as modem_reset.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

# An AT command's answer: SIMCom modules answer within 100 ms unless busy.
AT_TIMEOUT_MS = 2000
# How long the modem may take to register after power-on or a radio reset before one link
# attempt gives up (the application retries with backoff).
REGISTER_TIMEOUT_MS = 60000
REGISTER_POLL_MS = 2000
# From CONNECT to an IP address over PPP (LCP, authentication, IPCP), normally 1-3 s.
PPP_UP_MS = 30000
# Wi-Fi association and DHCP on a bench access point.
WIFI_UP_MS = 30000
POLL_MS = 250


def _log_event(log):
    def report(kind, detail):
        log("link: event", kind, detail)

    return report


class HostLink:
    """The host's network (the unix port): always up."""

    name = "host"

    def __init__(self):
        self.on_event = None

    async def up(self):
        return True

    async def down(self):
        pass

    def is_up(self):
        return True

    def signal_csq(self):
        return None


class PppLink:
    """4G: the modem's AT layer brings it to a data call, then PPP over the same serial line
    (the board's ppp_start(): network.PPP on the ESP32). A modem found hung on the way is
    recovered one ladder step per failed attempt (loa.modem.Recovery)."""

    name = "ppp"

    def __init__(self, board, cfg, log=print):
        self.board = board
        self.cfg = cfg
        self.log = log
        self.on_event = _log_event(log)
        self.modem = None
        self.recovery = None
        self._dialled = False

    def _report(self, kind, detail):
        if self.on_event is not None:
            self.on_event(kind, detail)

    async def up(self):
        if self.is_up():
            return True
        # Imported here: a receiver on Wi-Fi or the host's network keeps the heap it would take.
        from loa.modem import AtTimeout, Modem, ModemError, NotRegistered, Recovery

        board = self.board
        if self.modem is None:
            self.modem = Modem(board.modem_port(), AT_TIMEOUT_MS, self.log)
            self.recovery = Recovery(self.modem, board, self._report)
        modem = self.modem
        recovery = self.recovery
        assert recovery is not None
        if self._dialled:
            # The PPP session dropped: the modem is back in command mode after NO CARRIER.
            self.log("link: ppp dropped, dialling again")
            board.ppp_stop()
            self._dialled = False
        try:
            await modem.attach(self.cfg["apn"], self.cfg["sim_pin"], REGISTER_TIMEOUT_MS, REGISTER_POLL_MS)
            await modem.dial()
        except NotRegistered as exc:
            recovery.not_registered()
            await self._recover_if_hung()
            raise OSError("ppp: " + str(exc))
        except AtTimeout as exc:
            await self._recover_if_hung()
            raise OSError("ppp: modem silent: " + str(exc))
        except ModemError as exc:  # no SIM, locked SIM, ERROR: no reset helps, retried later
            raise OSError("ppp: " + str(exc))
        self._dialled = True
        board.ppp_start()
        deadline = ticks_add(ticks_ms(), PPP_UP_MS)
        while not board.ppp_connected():
            if ticks_diff(deadline, ticks_ms()) <= 0:
                board.ppp_stop()
                self._dialled = False
                raise OSError("ppp: no IP address")
            await asyncio.sleep_ms(POLL_MS)
        recovery.healthy()
        self.log("link: ppp up, csq", modem.csq)
        return True

    async def _recover_if_hung(self):
        recovery = self.recovery
        assert recovery is not None
        cause = recovery.cause()
        if cause is not None:
            await recovery.recover(cause)

    async def down(self):
        if self._dialled:
            self.board.ppp_stop()
            self._dialled = False

    def is_up(self):
        return self._dialled and self.board.ppp_connected()

    def signal_csq(self):
        # Read when the link comes up: while PPP runs, the serial line carries PPP, not AT.
        return self.modem.csq if self.modem is not None else None


class WifiLink:
    """Wi-Fi station (network.WLAN), for a receiver on a bench without a SIM."""

    name = "wifi"

    def __init__(self, cfg, log=print):
        self.cfg = cfg
        self.log = log
        self.on_event = None
        self._wlan = None

    async def up(self):
        if self.is_up():
            return True
        try:
            import network
        except ImportError:
            raise OSError("wifi: this board has no Wi-Fi")
        wlan = self._wlan or network.WLAN(network.WLAN.IF_STA)
        self._wlan = wlan
        wlan.active(True)
        wlan.connect(self.cfg["wifi_ssid"], self.cfg["wifi_password"])
        deadline = ticks_add(ticks_ms(), WIFI_UP_MS)
        while not wlan.isconnected():
            if ticks_diff(deadline, ticks_ms()) <= 0:
                wlan.disconnect()
                raise OSError("wifi: not connected to " + self.cfg["wifi_ssid"])
            await asyncio.sleep_ms(POLL_MS)
        self.log("link: wifi up", wlan.ifconfig()[0])
        return True

    async def down(self):
        if self._wlan is not None:
            self._wlan.disconnect()

    def is_up(self):
        return self._wlan is not None and self._wlan.isconnected()

    def signal_csq(self):
        """The Wi-Fi RSSI on the AT+CSQ scale (dBm = -113 + 2 csq), so telemetry reads alike."""
        if not self.is_up():
            return None
        wlan = self._wlan
        assert wlan is not None
        dbm = wlan.status("rssi")
        return max(0, min(31, (dbm + 113) // 2))


def make(cfg, board, log=print):
    kind = cfg.get("link", "host")
    if kind == "ppp":
        return PppLink(board, cfg, log)
    if kind == "wifi":
        return WifiLink(cfg, log)
    return HostLink()
