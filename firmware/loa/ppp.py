# The 4G data link (loa/link.py chooses it for "link": "ppp"): what a receiver on the ppp link
# holds while it is connected. Bringing the link up (the modem answering, SIM, registration,
# APN, the network time, the dial; the escape from data mode after a drop; the recovery ladder
# of a hung modem) is the modem's AT layer, loa/modem.py: loaded only while the link comes up
# and let go after it (loa.unload), as loa/tls.py and loa/sntp.py are. While PPP runs the
# serial line carries PPP, not AT, so nothing of the AT layer is needed then; what it must
# remember between two link-ups (the signal, the network time, how far up the recovery ladder
# the modem is) is kept here.

from micropython import const

from loa import unload

# Link-ups in a row that find no heap for the AT layer before the board resets. After a PPP
# drop the AT layer is loaded again into a heap the receiver's buffers, its schedule and its
# last session have cut up; with the link down nothing can be sent or played, so a reset,
# which brings the link up first in a heap in one piece, costs no more than the wait.
NO_HEAP_RESET = const(3)


class PppLink:
    """4G: the modem's AT layer brings it to a data call, then PPP over the same serial line
    (the board's ppp_start(): network.PPP on the ESP32)."""

    name = "ppp"

    def __init__(self, board, cfg, log=print):
        self.board = board
        self.cfg = cfg
        self.log = log
        self.on_event = None        # set by the application; None: logged
        self.port = None            # the modem's serial line (board.modem_port()), made once
        self.dialled = False        # a data call was made (the modem may be in data mode)
        self.net_time = None        # (Unix s by AT+CCLK?, board uptime ms then)
        # Kept for the AT layer between link-ups (loa/modem.py, link_up):
        self.csq = None             # AT+CSQ at the last link-up
        self.silent = 0             # AT commands unanswered in a row
        self.step = 0               # the next step of the recovery ladder
        self.unregistered = None    # uptime ms since which the modem is not registered
        self.no_heap = 0            # link-ups in a row without heap for the AT layer

    def report(self, kind, detail):
        if self.on_event is not None:
            self.on_event(kind, detail)
        else:
            self.log("link: event", kind, detail)

    async def up(self):
        if self.is_up():
            return True
        modem = None
        try:
            from loa import modem

            await modem.link_up(self)
            self.no_heap = 0
        except MemoryError:
            modem = None
            unload("modem")
            self.no_heap += 1
            if self.no_heap >= NO_HEAP_RESET:
                self.log("link: no heap for the modem's AT layer: resetting")
                self.board.reset()
            raise OSError("ppp: no heap for the modem's AT layer")
        finally:
            modem = None
            unload("modem")  # needed again only for the next link-up
        return True

    async def down(self):
        if self.dialled:
            self.board.ppp_stop()
            self.dialled = False

    def is_up(self):
        return self.dialled and self.board.ppp_connected()

    def network_time(self):
        """The modem's network time read at the last link-up, advanced by the uptime since."""
        t = self.net_time
        if t is None:
            return None
        return t[0] + (self.board.uptime_ms() - t[1]) // 1000

    def signal_csq(self):
        # Read when the link comes up: while PPP runs, the serial line carries PPP, not AT.
        return self.csq
