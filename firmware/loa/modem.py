# The 4G modem's AT command layer (3GPP TS 27.007, as SIMCom A76xx/SIM7600 modules speak it),
# over any serial port object with ``write(bytes)`` and ``async readline()`` (an asyncio
# StreamReader/StreamWriter pair around machine.UART on the board; a scripted port in tests).
#
# It brings the modem to the point where PPP can start: modem answering, echo off, SIM ready,
# registered on the network, APN set; and it reads the signal (AT+CSQ). A modem that stops
# answering, or that stays off the network, is hung: Recovery climbs a ladder of ever harder
# resets (radio off and on, power cycle, board reset), one step per failed link attempt.
#
# The 4G data link, loa/ppp.py's PppLink, loads this module only to bring the link up
# (link_up): the AT layer brings the modem to a data call, then PPP runs over the same serial
# line, and the module is let go (loa.unload) until the next link-up. A receiver on the ppp
# link holds only loa/ppp.py while it is connected.

import asyncio
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

from loa.schedule import days_from_civil

# Lines longer than this are cut (a UART answer is never this long; garbage can be).
MAX_LINE = const(256)
# Information lines kept per command (AT+COPS=? and similar list commands are not used).
MAX_LINES = const(16)

# AT commands unanswered in a row after which the modem counts as hung (one can be lost to
# line noise or a busy modem; three in a row, across retries, is not bad luck).
HUNG_TIMEOUTS = const(3)
# Not registered for this long (with PPP down, since PPP is only dialled once registered):
# the modem answers but its radio is stuck. Coverage gaps in the hills last minutes, so a
# radio reset before 5 minutes would only add to the gap.
UNREGISTERED_MS = 300000
# AT+CFUN switches the radio: it may take several seconds to answer.
CFUN_TIMEOUT_MS = 15000
# The recovery ladder, gentlest first; the last step repeats.
RECOVERY_STEPS = ("radio", "power", "board")

# +CREG/+CEREG <stat>: 1 registered (home), 5 registered (roaming).
REGISTERED = (1, 5)
REG_TEXT = {0: "not_searching", 2: "searching", 3: "denied", 4: "unknown"}

# The link's timing. An AT command's answer: SIMCom modules answer within 100 ms unless busy.
AT_TIMEOUT_MS = 2000
# How long the modem may take to register after power-on or a radio reset before one link
# attempt gives up (the application retries with backoff).
REGISTER_TIMEOUT_MS = 60000
REGISTER_POLL_MS = 2000
# From CONNECT to an IP address over PPP (LCP, authentication, IPCP), normally 1-3 s.
PPP_UP_MS = 30000
POLL_MS = 250
# The escape from data mode: "+++" counts only with this much silence on the line before and
# after it (S12, 1 s by default on SIMCom modules; a little more for the UART's own delays).
GUARD_MS = 1200
# A +CCLK year before this is the modem's default clock (70/01/01, 80/01/06), not the network's.
CCLK_MIN_YEAR = 2024


class ModemError(Exception):
    pass


class AtTimeout(ModemError):
    pass


class AtError(ModemError):
    """ERROR or +CME ERROR: <code> (code is None for a plain ERROR)."""

    def __init__(self, command, code=None):
        super().__init__(command + ": " + ("ERROR" if code is None else "+CME ERROR " + str(code)))
        self.code = code


class NoSim(ModemError):
    pass


class SimLocked(ModemError):
    pass


class NotRegistered(ModemError):
    def __init__(self, stat):
        super().__init__("not registered: " + REG_TEXT.get(stat, str(stat)))
        self.stat = stat


def csq_to_dbm(csq):
    """0 is -113 dBm or less, 31 is -51 dBm or more, 99 is unknown (None)."""
    if csq is None or not 0 <= csq <= 31:
        return None
    return -113 + 2 * csq


def cclk_time(value):
    """Unix seconds (UTC) of an AT+CCLK? value ``"yy/MM/dd,hh:mm:ss+zz"`` (+zz or -zz: the
    local offset in quarter hours), or None if it is not a network time."""
    try:
        date, _, clock = value.strip().strip('"').partition(",")
        y, mo, d = [int(x) for x in date.split("/")]
        h, mi, s = [int(x) for x in clock[:8].split(":")]
        tz = int(clock[8:]) if len(clock) > 8 else 0
    except ValueError:
        return None
    y += 2000 if y < 70 else 1900  # the modems' defaults are 1970 and 1980
    if y < CCLK_MIN_YEAR or not (0 < mo < 13 and 0 < d < 32 and h < 24 and mi < 60 and s < 60):
        return None
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - tz * 900


def _ints(text):
    out = []
    for part in text.split(","):
        part = part.strip().strip('"')
        try:
            out.append(int(part))
        except ValueError:
            out.append(None)
    return out


class Modem:
    def __init__(self, port, timeout_ms=2000, log=print):
        self.port = port
        self.timeout_ms = timeout_ms
        self.log = log
        self.csq = None
        self.silent = 0  # AT commands unanswered in a row
        self._lock = asyncio.Lock()

    async def _readline(self, deadline):
        left = ticks_diff(deadline, ticks_ms())
        if left <= 0:
            raise asyncio.TimeoutError
        line = await asyncio.wait_for_ms(self.port.readline(), left)
        if not line:
            raise ModemError("serial port closed")
        if isinstance(line, str):
            line = line.encode()
        return bytes(line[:MAX_LINE]).strip()

    async def command(self, cmd, timeout_ms=None, final=b"OK"):
        """Send ``cmd`` and return its information lines (echo and empty lines dropped)
        once ``final`` (OK, or CONNECT for a dial) arrives. Raises AtError, AtTimeout."""
        async with self._lock:
            deadline = ticks_add(ticks_ms(), timeout_ms or self.timeout_ms)
            self.port.write(cmd.encode() + b"\r")
            echo = cmd.encode()
            lines = []
            try:
                while True:
                    line = await self._readline(deadline)
                    if not line or line == echo:
                        continue
                    self.silent = 0
                    if line.startswith(final):
                        if final != b"OK":
                            lines.append(line)
                        return lines
                    if line == b"ERROR" or line == b"NO CARRIER":
                        raise AtError(cmd)
                    if line.startswith(b"+CME ERROR:") or line.startswith(b"+CMS ERROR:"):
                        code = line[11:].strip()
                        try:
                            raise AtError(cmd, int(code))
                        except ValueError:
                            raise AtError(cmd, code.decode())
                    if len(lines) < MAX_LINES:
                        lines.append(line)
            except asyncio.TimeoutError:
                self.silent += 1
                raise AtTimeout(cmd + ": no answer")

    async def query(self, cmd, prefix, timeout_ms=None):
        """The value after ``prefix`` ("+CSQ:") in the answer to ``cmd``, or None."""
        for line in await self.command(cmd, timeout_ms):
            if line.startswith(prefix):
                return line[len(prefix):].strip().decode()
        return None

    async def sync(self, tries=5):
        """Wait until the modem answers AT (it ignores the first characters after power-on)."""
        for attempt in range(tries):
            try:
                await self.command("AT")
                await self.command("ATE0")
                return
            except AtTimeout:
                if attempt == tries - 1:
                    raise

    async def sim_ready(self, pin=""):
        try:
            status = await self.query("AT+CPIN?", b"+CPIN:", 5000)
        except AtError as exc:
            if exc.code in (10, 13):  # SIM not inserted, SIM failure
                raise NoSim("no SIM (+CME ERROR " + str(exc.code) + ")")
            raise
        if status == "READY":
            return
        if status == "SIM PIN" and pin:
            await self.command('AT+CPIN="' + pin + '"', 5000)
            return
        raise SimLocked("SIM not ready: " + str(status))

    async def registration(self):
        """The network registration status: <stat> of +CEREG (LTE), else of +CREG."""
        best = None
        for cmd, prefix in (("AT+CEREG?", b"+CEREG:"), ("AT+CREG?", b"+CREG:")):
            value = await self.query(cmd, prefix)
            if value is None:
                continue
            fields = _ints(value)
            stat = fields[1] if len(fields) > 1 else None
            if stat in REGISTERED:
                return stat
            if best is None:
                best = stat
        return 4 if best is None else best

    async def wait_registered(self, timeout_ms=60000, poll_ms=2000):
        deadline = ticks_add(ticks_ms(), timeout_ms)
        while True:
            stat = await self.registration()
            if stat in REGISTERED:
                return stat
            if stat == 3 or ticks_diff(deadline, ticks_ms()) <= 0:
                raise NotRegistered(stat)
            await asyncio.sleep_ms(poll_ms)

    async def signal(self):
        """AT+CSQ: the RSSI index (0..31, 99 unknown); kept in ``csq``."""
        value = await self.query("AT+CSQ", b"+CSQ:")
        fields = _ints(value or "")
        csq = fields[0] if fields else None
        if csq is None or not (0 <= csq <= 31 or csq == 99):
            csq = 99
        self.csq = csq
        return csq

    async def attach(self, apn, pin="", register_timeout_ms=60000, poll_ms=2000):
        """Everything before PPP: answering, SIM, registered, APN set. Returns the CSQ."""
        await self.sync()
        await self.sim_ready(pin)
        await self.wait_registered(register_timeout_ms, poll_ms)
        await self.command('AT+CGDCONT=1,"IP","' + apn + '"')
        return await self.signal()

    async def network_time(self):
        """AT+CCLK?: the network's time as Unix seconds, or None (no network time, ERROR)."""
        try:
            value = await self.query("AT+CCLK?", b"+CCLK:")
        except AtError:
            return None
        return cclk_time(value) if value else None

    async def escape(self, guard_ms=GUARD_MS):
        """Back to command mode after a data call: silence, "+++" without CR, silence, OK; then
        ATH. No OK (the network ended the call and the modem is in command mode already, where
        "+++" only prefixes the next line): AT must answer, even ERROR. Raises AtTimeout, with
        the modem counted hung, if it does not."""
        async with self._lock:
            await asyncio.sleep_ms(guard_ms)
            self.port.write(b"+++")
            await asyncio.sleep_ms(guard_ms)
            deadline = ticks_add(ticks_ms(), self.timeout_ms)
            ok = False
            try:
                while not ok:
                    ok = await self._readline(deadline) == b"OK"
            except asyncio.TimeoutError:
                pass
        if not ok:
            try:
                await self.command("AT")
            except AtError:
                pass
            except AtTimeout:
                self.silent = HUNG_TIMEOUTS  # the recovery ladder takes over
                raise
        try:
            await self.command("ATH")
        except AtError:  # NO CARRIER or ERROR: no call left to hang up
            pass

    async def dial(self, timeout_ms=30000):
        """Start the data call; the port then carries PPP."""
        await self.command("ATD*99#", timeout_ms, final=b"CONNECT")

    async def radio_reset(self):
        """Switch the radio off and on again (minimum functionality, then full)."""
        await self.command("AT+CFUN=0", CFUN_TIMEOUT_MS)
        await self.command("AT+CFUN=1", CFUN_TIMEOUT_MS)


class Recovery:
    """Detects a hung modem and climbs the recovery ladder: AT+CFUN=0/1, then a power cycle
    through the board's PWRKEY, then a board reset. Each step is reported as the event
    ``modem_reset`` with the detail ``<step>:<cause>`` (cause ``at_timeout`` or
    ``not_registered``). ``healthy()`` (the link came up) starts the ladder again at the
    bottom."""

    def __init__(self, modem, board, report):
        self.modem = modem
        self.board = board
        self.report = report  # report(kind, detail)
        self.step = 0
        self._unregistered_since = None

    def not_registered(self):
        if self._unregistered_since is None:
            self._unregistered_since = ticks_ms()

    def healthy(self):
        self.step = 0
        self._unregistered_since = None

    def cause(self):
        """Why the modem counts as hung, or None if it does not."""
        if self.modem.silent >= HUNG_TIMEOUTS:
            return "at_timeout"
        since = self._unregistered_since
        if since is not None and ticks_diff(ticks_ms(), since) >= UNREGISTERED_MS:
            return "not_registered"
        return None

    async def recover(self, cause):
        """Take the next step of the ladder; returns its name."""
        step = RECOVERY_STEPS[min(self.step, len(RECOVERY_STEPS) - 1)]
        self.step += 1
        self.modem.log("modem: hung (" + cause + "), recovery step", step)
        self.report("modem_reset", step + ":" + cause)
        self._unregistered_since = None
        self.modem.silent = 0
        if step == "radio":
            try:
                await self.modem.radio_reset()
            except ModemError as exc:  # the next failed attempt climbs to the power cycle
                self.modem.log("modem: radio reset failed:", repr(exc))
        elif step == "power":
            await self.board.modem_power_cycle()
        else:
            self.board.reset()
        return step


async def link_up(link):
    """Bring the 4G link ``link`` (loa/ppp.py's PppLink, which loads this module for it) up:
    back to command mode if PPP dropped, attached, the network time read, the data call
    dialled, then PPP until it has an IP address. What the AT layer must remember until the
    next link-up (the signal, the silent count, the recovery ladder's step) is kept on
    ``link``. A modem found hung on the way is recovered one ladder step per failed attempt.
    Raises OSError if the link does not come up."""
    board = link.board
    if link.port is None:
        link.port = board.modem_port()
    modem = Modem(link.port, AT_TIMEOUT_MS, link.log)
    modem.csq = link.csq
    modem.silent = link.silent
    recovery = Recovery(modem, board, link.report)
    recovery.step = link.step
    recovery._unregistered_since = link.unregistered
    try:
        await _up(link, modem, recovery)
    finally:
        link.csq = modem.csq
        link.silent = modem.silent
        link.step = recovery.step
        link.unregistered = recovery._unregistered_since


async def _up(link, modem, recovery):
    board = link.board
    cfg = link.cfg
    try:
        if link.dialled:
            # The PPP session dropped: the modem may still be in data mode.
            link.log("link: ppp dropped, back to command mode")
            board.ppp_stop()
            link.dialled = False
            await modem.escape(GUARD_MS)
        await modem.attach(cfg["apn"], cfg["sim_pin"], REGISTER_TIMEOUT_MS, REGISTER_POLL_MS)
        t = await modem.network_time()
        if t is not None:
            link.net_time = (t, board.uptime_ms())
        await modem.dial()
    except NotRegistered as exc:
        recovery.not_registered()
        await _recover_if_hung(recovery)
        raise OSError("ppp: " + str(exc))
    except AtTimeout as exc:
        await _recover_if_hung(recovery)
        raise OSError("ppp: modem silent: " + str(exc))
    except ModemError as exc:  # no SIM, locked SIM, ERROR: no reset helps, retried later
        raise OSError("ppp: " + str(exc))
    link.dialled = True
    board.ppp_start()
    deadline = ticks_add(ticks_ms(), PPP_UP_MS)
    while not board.ppp_connected():
        if ticks_diff(deadline, ticks_ms()) <= 0:
            board.ppp_stop()
            link.dialled = False
            raise OSError("ppp: no IP address")
        await asyncio.sleep_ms(POLL_MS)
    recovery.healthy()
    link.log("link: ppp up, csq", modem.csq)


async def _recover_if_hung(recovery):
    cause = recovery.cause()
    if cause is not None:
        await recovery.recover(cause)
