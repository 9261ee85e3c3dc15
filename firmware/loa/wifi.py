# The Wi-Fi link (loa/link.py chooses it for "link": "wifi"): a receiver on a bench without a
# SIM. Same interface as the other links.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

# Wi-Fi association and DHCP on a bench access point.
WIFI_UP_MS = 30000
POLL_MS = 250


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
