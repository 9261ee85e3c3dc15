# The data link under the MQTT session: 4G over PPP, Wi-Fi on a bench, or the host's network
# on the unix port. Chosen by the config key "link": "ppp", "wifi", anything else the host.
# The 4G link lives in loa/ppp.py (the modem's AT layer, loa/modem.py, loaded by it only while
# the link comes up), the Wi-Fi link in loa/wifi.py: each is imported only by a receiver that
# uses it, so the others keep their heap.
#
# Every link has the same small interface: async up() (raises OSError if it cannot),
# async down(), is_up(), signal_csq() (0..31, 99 unknown, None without a radio), and
# on_event(kind, detail), set by the application to report events such as modem_reset.


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


def make(cfg, board, log=print):
    kind = cfg.get("link", "host")
    if kind == "ppp":
        from loa.ppp import PppLink

        return PppLink(board, cfg, log)
    if kind == "wifi":
        from loa.wifi import WifiLink

        return WifiLink(cfg, log)
    return HostLink()
