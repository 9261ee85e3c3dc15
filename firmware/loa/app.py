# The receiver application: the protocol of docs/protocol.md over one MQTT session at a time.
#
#   1. bring the link up; increment and persist the session counter; CONNECT with the Will
#      {"v":1,"state":"offline","session":n,"reason":"lost"} (retained, QoS 1);
#   2. after CONNACK, the retained birth {"state":"online","reason":"boot"|"reconnect"} (with
#      "off" on a reconnect), subscribe to its own state and cmd topics, the "boot" or
#      "link_lost" event, then telemetry every telemetry_interval;
#   3. a retained offline state of another session seen while online (a late Will): the
#      birth again;
#   4. on a lost connection: reconnect with jittered exponential backoff;
#   5. on a planned stop: the retained goodbye {"state":"offline","reason":"shutdown"},
#      then DISCONNECT (the broker discards the Will).

import json
import random

import asyncio
from loa import FIRMWARE, config, hal, mqtt
from loa.state import State
from loa.supervisor import Supervisor

TOPIC_ROOT = "loa/v1/rx/"
# Largest state or command payload decoded; the protocol's own are far smaller.
MAX_PAYLOAD = 4096
# How often the session loop wakes: reports to the supervisor, checks for telemetry, stop
# requests and lost connections.
TICK_MS = 250
# The session loop must report at least this often, or the watchdog resets the board. The
# longest wait it does is one connect attempt (TCP, TLS, CONNACK: 2 x connect_timeout).
SESSION_LIMIT_MS = 60000
# The goodbye gets this long for its PUBACK before DISCONNECT is sent anyway.
GOODBYE_TIMEOUT = 5


def csq_to_dbm(csq):
    """3GPP TS 27.007: 0 is -113 dBm or less, 31 is -51 dBm or more, 99 is unknown."""
    if csq is None or not 0 <= csq <= 31:
        return None
    return -113 + 2 * csq


def _loss_cause(exc):
    """A short code for how a connection ended (the link_lost event's detail)."""
    if isinstance(exc, mqtt.PingTimeout):
        return "ping_timeout"
    if isinstance(exc, mqtt.AckTimeout):
        return "ack_timeout"
    if isinstance(exc, mqtt.ProtocolError):
        return "protocol_error"
    if isinstance(exc, mqtt.Timeout):
        return "timeout"
    return "connection_lost"


class Receiver:
    def __init__(self, board, cfg, state, supervisor=None, log=print):
        self.board = board
        self.cfg = cfg
        self.state = state
        self.supervisor = supervisor
        self.log = log
        rid = cfg["id"]
        self.rid = rid
        self.state_topic = TOPIC_ROOT + rid + "/state"
        self.cmd_topic = TOPIC_ROOT + rid + "/cmd"
        self.telemetry_topic = TOPIC_ROOT + rid + "/telemetry"
        self.event_topic = TOPIC_ROOT + rid + "/event"
        self.client = None
        self.online = False
        self.born = False          # a birth was sent since boot
        self.boot_pending = True   # the boot event is still to be sent
        self.loss = None           # how the previous connection ended
        self.heard_ms = 0          # uptime when the previous connection last heard the broker
        self.seq = 0
        self.reassert = False
        self.births = 0
        self.commands = 0
        self.stream = "idle"       # no stream player yet
        self.underruns = 0
        self.birth = ""            # the current session's birth, as sent
        # Called once, after the first session is established (commits a trial slot).
        self.on_first_online = None

    # -- payloads -----------------------------------------------------------------------------

    def _state(self, state, reason, off=None):
        msg = {"v": 1, "state": state, "session": self.state.session, "reason": reason}
        if state == "online":
            msg["fw"] = FIRMWARE
        if off is not None:
            msg["off"] = off
        return json.dumps(msg)

    def _event(self, kind, detail=None):
        msg = {"v": 1, "session": self.state.session, "ts": self.board.unix_time(), "kind": kind}
        if detail:
            msg["detail"] = detail[:120]
        return json.dumps(msg)

    def telemetry(self):
        board = self.board
        msg = {
            "v": 1,
            "session": self.state.session,
            "seq": self.seq,
            "ts": board.unix_time(),
            "up": board.uptime_ms() // 1000,
            "amp": board.amp_state(),
            "st": self.stream,
            "urun": self.underruns,
            "mem": board.free_memory(),
            "rst": board.reset_cause(),
            "fw": FIRMWARE,
        }
        csq = board.signal_csq()
        if csq is not None and (0 <= csq <= 31 or csq == 99):
            msg["csq"] = csq
            dbm = csq_to_dbm(csq)
            if dbm is not None:
                msg["rssi"] = dbm
        # Values outside the protocol's ranges come from a broken sensor: left out rather
        # than have the whole report refused.
        temp = board.temperature()
        if temp is not None and -40 <= temp <= 125:
            msg["temp"] = round(temp, 1)
        vin = board.supply_voltage()
        if vin is not None and 0 <= vin <= 60:
            msg["vin"] = round(vin, 2)
        return json.dumps(msg)

    # -- incoming -----------------------------------------------------------------------------

    def on_message(self, topic, payload, retained):
        if len(payload) > MAX_PAYLOAD:
            return
        if topic == self.state_topic:
            try:
                msg = json.loads(payload)
            except ValueError:
                self.log("app: ignoring a state message that is not JSON")
                return
            if not isinstance(msg, dict) or msg.get("v") != 1:
                return
            if msg.get("state") == "offline" and self.online and msg.get("session") != self.state.session:
                # A late Will (or goodbye) of another session became the retained state while
                # this one is alive: put the birth back (in the session loop).
                self.log("app: retained state is offline of session", msg.get("session"),
                         "while session", self.state.session, "is online: re-asserting the birth")
                self.reassert = True
        elif topic == self.cmd_topic:
            self.commands += 1  # commands come in a later version

    # -- one session --------------------------------------------------------------------------

    def _alive(self):
        if self.supervisor is not None:
            self.supervisor.alive("session")

    def _new_client(self, session):
        cfg = self.cfg
        will = (self.state_topic, self._state("offline", "lost"), 1, True)
        ssl = None
        if cfg["tls"]:
            ssl = self.board.ssl_context(cfg["ca"], bool(cfg["ca"]))
        return mqtt.Client(
            cfg["id"], username=cfg["id"], password=cfg["password"], keepalive=cfg["keepalive"],
            will=will, on_message=self.on_message, connect_timeout=cfg["connect_timeout"],
            ack_timeout=cfg["ack_timeout"], ack_retries=cfg["ack_retries"],
            ping_timeout=cfg["ping_timeout"], ssl=ssl,
            server_hostname=cfg["server_name"] or None, log=self.log)

    async def _establish(self):
        cfg = self.cfg
        session = self.state.next_session()  # persisted before CONNECT: never used twice
        client = self._new_client(session)
        self.client = client
        await client.connect(cfg["host"], cfg["port"])
        try:
            off = None
            reason = "boot"
            if self.born:
                reason = "reconnect"
                off = round(max(0, self.board.uptime_ms() - self.heard_ms) / 1000, 1)
            self.online = True
            self.reassert = False
            self.birth = self._state("online", reason, off)
            await client.publish(self.state_topic, self.birth, 1, True)
            self.born = True
            self.births += 1
            self.seq = 0
            self.log("app: online, session", session, reason, "" if off is None else off)
            granted = await client.subscribe([(self.state_topic, 1), (self.cmd_topic, 1)])
            if 0x80 in granted:
                self.log("app: subscription refused:", granted)
            if self.boot_pending:
                event = self._event("boot", self.board.reset_cause())
            else:
                event = self._event("link_lost", self.loss)
            await client.publish(self.event_topic, event, 1)
            self.boot_pending = False
        except BaseException:
            client.abort()
            if self.online:
                self._lost(client)
            raise
        if self.on_first_online is not None:
            hook, self.on_first_online = self.on_first_online, None
            hook()
        return client

    async def _serve(self, client):
        """Telemetry every interval until the connection ends or a stop is asked for."""
        interval = int(self.cfg["telemetry_interval"] * 1000)
        next_report = self.board.uptime_ms()
        while not client.closed.is_set() and not self.board.stop_requested:
            self._alive()
            now = self.board.uptime_ms()
            try:
                if self.reassert:
                    self.reassert = False
                    await client.publish(self.state_topic, self.birth, 1, True)
                if now - next_report >= 0:
                    next_report += interval
                    if now - next_report >= 0:  # fell behind (a long stall): no burst
                        next_report = now + interval
                    await client.publish(self.telemetry_topic, self.telemetry())
                    self.seq += 1
            except mqtt.MQTTError:
                break  # the client closed itself; handled below
            await asyncio.sleep_ms(TICK_MS)

    def _lost(self, client):
        self.online = False
        if client.error is not None:
            self.loss = _loss_cause(client.error)
            self.log("app: connection lost:", repr(client.error))
        # When the broker was last heard, by the never-wrapping board clock.
        from time import ticks_diff, ticks_ms

        silent = max(0, ticks_diff(ticks_ms(), client.last_received))
        self.heard_ms = max(0, self.board.uptime_ms() - silent)

    async def _pause(self, seconds):
        """Sleep, reporting in, until ``seconds`` passed or a stop is asked for."""
        end = self.board.uptime_ms() + int(seconds * 1000)
        while self.board.uptime_ms() < end and not self.board.stop_requested:
            self._alive()
            await asyncio.sleep_ms(TICK_MS)

    async def run(self):
        """Connect, serve, reconnect, until a stop is asked for; then say goodbye."""
        cfg = self.cfg
        failures = 0
        if self.supervisor is not None:
            self.supervisor.register("session", SESSION_LIMIT_MS)
        while not self.board.stop_requested:
            self._alive()
            client = None
            try:
                await self.board.link_up()
                client = await self._establish()
            except (OSError, mqtt.MQTTError) as exc:
                failures += 1
                self.log("app: connect attempt failed:", repr(exc))
            except Exception as exc:  # a bug or a bad file must not end the receiver's life
                failures += 1
                self.log("app: unexpected error, retrying:", repr(exc))
            if client is not None:
                failures = 0
                await self._serve(client)
                if self.board.stop_requested and not client.closed.is_set():
                    break
                self._lost(client)
            ceiling = min(cfg["backoff_cap"], cfg["backoff_base"] * 2 ** min(failures, 16))
            await self._pause(random.uniform(0, ceiling))
        await self.goodbye()

    async def goodbye(self):
        client = self.client
        if client is not None and self.online and client.connected:
            try:
                await asyncio.wait_for(
                    client.publish(self.state_topic, self._state("offline", "shutdown"), 1, True),
                    GOODBYE_TIMEOUT)
            except (asyncio.TimeoutError, mqtt.MQTTError) as exc:
                self.log("app: goodbye not acknowledged:", repr(exc))
            await client.disconnect()
            self.log("app: offline, session", self.state.session, "shutdown")
        elif client is not None:
            client.abort()
        self.online = False
        await self.board.link_down()


async def _main(board, cfg, state, log, on_first_online=None):
    supervisor = Supervisor(board, cfg["wdt_ms"], log)
    start = getattr(board, "start", None)
    if start is not None:
        start()
    watchdog = asyncio.create_task(supervisor.run())
    receiver = Receiver(board, cfg, state, supervisor, log)
    receiver.on_first_online = on_first_online
    try:
        await receiver.run()
    finally:
        watchdog.cancel()


def main(slot="dev", trial=False, config_path="config.json", state_path="state.json"):
    """Entry point (main.py calls it with the slot it chose)."""
    cfg = config.load(config_path)
    board = hal.make(cfg)
    state = State(state_path)
    print("loa:", FIRMWARE, "slot", slot, "trial" if trial else "", "board", board.name,
          "reset", board.reset_cause(), "id", cfg["id"], "session", state.session)
    asyncio.run(_main(board, cfg, state, print, _committer(slot) if trial else None))


def _committer(slot):
    def commit():
        from loa import slots

        slots.commit(slot)
        print("loa: slot", slot, "committed")

    return commit
