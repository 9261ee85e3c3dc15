# The receiver application: the protocol of docs/protocol.md over one MQTT session at a time.
#
#   1. bring the link up; increment and persist the session counter; CONNECT with the Will
#      {"v":1,"state":"offline","session":n,"reason":"lost"} (retained, QoS 1);
#   2. after CONNACK, subscribe to its own cmd topic, the retained birth {"state":"online",
#      "reason":"boot"|"reconnect"} (with "off" on a reconnect), subscribe to its own state
#      topic, the "boot" or "link_lost" event, the events kept while offline, the play
#      status, then telemetry every telemetry_interval;
#   3. a retained offline state of another session seen while online (a late Will): the
#      birth again;
#   4. on a lost connection: reconnect with jittered exponential backoff;
#   5. on a planned stop: the retained goodbye {"state":"offline","reason":"shutdown"},
#      then DISCONNECT (the broker discards the Will).
#
# Beside the session, two tasks run for the receiver's whole life, connected or not: the
# control task (commands, priorities, the schedule, what plays) and the clock task (SNTP).
# Neither ever waits for the network of the session: acks, events and the play status go
# into bounded queues that the session loop sends while it is online.

import gc
import json
import random

import asyncio
from loa import FIRMWARE, commands, files, hal, mqtt, unload
from loa.clock import Clock
from loa.player import Player, PlayerError
from loa.schedule import NO_VOLUME, Schedule, local_day
from loa.state import State
from loa.supervisor import Supervisor

TOPIC_ROOT = "loa/v1/rx/"
# Largest state payload decoded; the protocol's own are far smaller. (Commands have their
# own limit, in loa/commands.py.)
MAX_PAYLOAD = 4096
# How often the session and control loops wake.
TICK_MS = 250
# The session loop must report at least this often, or the watchdog resets the board. The
# longest wait it does is one connect attempt (TCP, TLS, CONNACK: 2 x connect_timeout).
SESSION_LIMIT_MS = 60000
# The control loop's longest wait is a stream start (PLAY_TIMEOUT_S) after a stop.
CONTROL_LIMIT_MS = 45000
# The clock loop's longest wait: SNTP_TRIES requests of 2 s, and a DNS lookup.
CLOCK_LIMIT_MS = 45000
# The goodbye gets this long for its PUBACK before DISCONNECT is sent anyway.
GOODBYE_TIMEOUT = 5
# A stream that does not play within this is "stream_unreachable" / "stream_error".
PLAY_TIMEOUT_S = 15
# Events raised while offline, kept for the next birth (the oldest go first); acks waiting
# for the connection (an ack lost with it is answered again: the service re-sends the
# command at the next birth); commands received but not yet handled, at most INBOX of them
# and INBOX_BYTES of their payloads (one largest command and some small ones: a decoded
# 24-slot schedule takes more heap than its 8 KiB of text).
EVENT_QUEUE = 16
ACK_QUEUE = 8
INBOX = 8
INBOX_BYTES = 9216
# A command payload at least this large is followed by a collection, so that its decoding's
# garbage does not stay between the blocks the session and the player hold.
LARGE_COMMAND = 1024
# The update under way (loa/update.py) keeps its record in this file. An update waiting for a
# stream to end starts beside it once this much of the heap is free (loa/update.py FETCH_ROOM).
UPDATE_RECORD = "update.json"
UPDATE_ROOM = 28672
# The record's states once the update has ended (loa/update.py FINAL).
UPDATE_FINAL = ("confirmed", "failed", "rolled_back")
# An update command kept across the reset that makes room for its checks (Receiver._offer).
UPDATE_COMMAND = "update.cmd"
# A slot whose stream failed is tried again this often while the slot lasts.
SLOT_RETRY_S = 30
# Clock syncs: every 6 h (an ESP32 crystal drifts well under a second in that time), and
# after a failed one, again after a minute (until the first, the schedule does not run).
SYNC_EVERY_MS = 6 * 3600 * 1000
SYNC_RETRY_MS = 60 * 1000
# A correction larger than this is reported as a clock_sync event.
CLOCK_EVENT_MS = 1000
# Board readings checked every control tick, with hysteresis so that a reading hovering at a
# threshold raises one event, not one per check. The 12 V input: a lead-acid battery is
# nearly flat at 11 V and the amplifier clips on peaks below it; armed again at 11.5 V (the
# charge or the mains is back).
LOW_SUPPLY_V = 11.0
SUPPLY_OK_V = 11.5
# The chip's die, a few degrees above the enclosure: 85 C is the top of the ESP32's rated
# range; armed again 5 degrees below.
OVERHEAT_C = 85.0
COOL_C = 80.0
# The amplifier's state must read the same this many ticks in a row (2 s) for amp_fault and
# amp_recovered: the current sense settles after the relay closes.
AMP_CHECKS = 8


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
    def __init__(self, board, cfg, state, supervisor=None, log=print, config_path="config.json", slot="dev",
                 trial=False):
        self.board = board
        self.cfg = cfg
        self.state = state
        self.supervisor = supervisor
        self.log = log
        self.config_path = config_path
        rid = cfg["id"]
        self.rid = rid
        self.state_topic = TOPIC_ROOT + rid + "/state"
        self.cmd_topic = TOPIC_ROOT + rid + "/cmd"
        self.telemetry_topic = TOPIC_ROOT + rid + "/telemetry"
        self.event_topic = TOPIC_ROOT + rid + "/event"
        self.play_topic = TOPIC_ROOT + rid + "/play"
        self.ack_topic = TOPIC_ROOT + rid + "/ack"
        self.update_topic = TOPIC_ROOT + rid + "/update"
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
        self.birth = ""            # the current session's birth, as sent
        # Called once, after the first birth and report (commits a trial slot).
        self.on_first_online = None
        self.slot = slot           # the application slot running (main.py), "dev" without one
        self.trial = trial         # running on trial: it must report within trial_s
        self.trial_until = board.uptime_ms() + cfg["trial_s"] * 1000 if trial else None
        self.reported = False      # the first report since boot was sent
        self.update = None         # the update under way (loa/update.py Updater), or None
        self.update_status = []    # update statuses to send (retained)
        self.update_waiting = False  # an update accepted while playing: started once nothing does
        self.confirming = False    # the new version on its first run: confirmed after its first report
        self.update_later = None   # (id, fields, may reset) of an update command not yet checked (_offer)
        # The two large buffers, allocated once and first, while the heap is in one piece:
        # the incoming MQTT packet (lent to every connection) and the player's stream ring.
        gc.collect()
        self.packet_buffer = bytearray(mqtt.MAX_PACKET)
        self.player = Player(board, log)
        # The TLS context, made once and kept for every connection: it holds mbedTLS's
        # configuration, entropy and CA in one block of about 3 KiB, which a heap that has been
        # in use for a while may no longer have in one piece. (Made again at a connection
        # attempt if it could not be made here, e.g. without the CA file.)
        self.ssl = None
        if cfg["tls"]:
            try:
                self.ssl = board.ssl_context(cfg["ca"], bool(cfg["ca"]))
            except Exception as exc:
                log("app: no TLS context:", repr(exc))
        self.clock = Clock(board)
        self.player.on_end = self._on_player_end
        self.schedule = Schedule(log=log)
        self.schedule.load()
        self.ledger = commands.Ledger(log=log)
        # The link reports modem recovery steps (modem_reset) through the event queue.
        board.link_layer().on_event = self.raise_event
        self.inbox = []            # decoded commands (or their commands.Rejected), oldest first
        self.inbox_bytes = 0       # the payload bytes of those
        self.acks = []             # acks to send: (command id, status, why, dup, time)
        self.events = []           # (ts, kind, detail) to send
        self.play_sent = None      # the play status last sent in this session
        self.reboot = False        # a reboot command was carried out
        self.sync_wanted = True    # a clock sync is due (the first link-up)
        self.next_sync_ms = None   # uptime of the next periodic sync
        # What plays: its source ("none", "cmd", "sched"), reference (command or slot id),
        # priority rank (-1 for nothing), URL, why the player is in its state, and for a play
        # with a duration, the uptime it ends at.
        self.src = "none"
        self.ref = None
        self.rank = -1
        self.url = None
        self.why = "boot"
        self.until_ms = None
        self.ended = None          # set by the player when playback ended by itself
        self.slot_key = None       # (slot id, local day) of the slot occurrence dealt with
        self.slot_failed = None    # the occurrence whose stream failed (reported once)
        self.slot_retry = 0        # Unix s before which a failed slot is not tried again
        self.alarms = []           # board events raised and not yet cleared
        self.amp_seen = None       # the amplifier's last state, and how many ticks in a row
        self.amp_ticks = 0

    # -- payloads -----------------------------------------------------------------------------

    def _state(self, state, reason, off=None):
        msg = {"v": 1, "state": state, "session": self.state.session, "reason": reason}
        if state == "online":
            msg["fw"] = FIRMWARE
            msg["hw"] = self.cfg["hw"]
        if off is not None:
            msg["off"] = off
        return json.dumps(msg)

    def _event(self, kind, detail=None, ts=None):
        msg = {"v": 1, "session": self.state.session, "kind": kind,
               "ts": self.clock.unix_time() if ts is None else ts}
        if detail:
            msg["detail"] = detail[:120]
        return json.dumps(msg)

    def raise_event(self, kind, detail=None):
        """Queue an event with the time it happened; sent at once when online, else after
        the next birth."""
        if len(self.events) >= EVENT_QUEUE:
            self.events.pop(0)
        self.events.append((self.clock.unix_time(), kind, detail))

    def _ack(self, command_id, status, why=None, dup=False):
        # Kept as its values, not as the message: one that waits through a cut link goes out
        # in the session it is sent in, like every message (docs/protocol.md).
        if len(self.acks) >= ACK_QUEUE:
            self.acks.pop(0)
        self.acks.append((command_id, status, why, dup, self.clock.unix_time()))

    def _ack_message(self, command_id, status, why, dup, ts):
        msg = {"v": 1, "session": self.state.session, "id": command_id, "st": status, "ts": ts}
        if why:
            msg["why"] = why
        if dup:
            msg["dup"] = True
        return json.dumps(msg)

    def _play_view(self):
        """What the play status says, without its time: sent again whenever it changes."""
        return (self.player.state, self.src, self.ref, self.rank, self.url, self.board.volume(),
                self.why, self.schedule.version)

    def _play_status(self, view):
        st, src, ref, rank, url, volume, why, version = view
        msg = {"v": 1, "session": self.state.session, "ts": self.clock.unix_time(), "st": st,
               "src": src, "vol": volume, "why": why}
        if src != "none":
            msg["pri"] = commands.PRIORITIES[rank]
            msg["ref"] = ref
            msg["url"] = url
        if version is not None:
            msg["sched"] = version
        return json.dumps(msg)

    def telemetry(self):
        board = self.board
        player = self.player
        clock = self.clock
        msg = {
            "v": 1,
            "session": self.state.session,
            "seq": self.seq,
            "ts": clock.unix_time(),
            "up": board.uptime_ms() // 1000,
            "amp": board.amp_state(),
            "st": player.state,
            "urun": player.underruns,
            "sb": player.bytes,
            "vol": board.volume(),
            "mem": board.free_memory(),
            "rst": board.reset_cause(),
            "fw": FIRMWARE,
        }
        if player.kbps and player.state in ("playing", "buffering"):
            msg["kbps"] = player.kbps
        if self.schedule.version is not None:
            msg["sched"] = self.schedule.version
        if clock.skew_ms is not None:
            msg["skew"] = clock.skew_ms
            msg["sync"] = clock.since_sync()
        csq = board.signal_csq()
        if csq is not None and (0 <= csq <= 31 or csq == 99):
            msg["csq"] = csq
            if csq != 99:  # 3GPP TS 27.007: 0 is -113 dBm or less, 31 is -51 dBm or more
                msg["rssi"] = -113 + 2 * csq
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
        if topic == self.cmd_topic:
            self.commands += 1
            self.log("app: cmd", self.commands)  # the conformance driver counts these lines
            size = len(payload)
            if len(self.inbox) >= INBOX or self.inbox_bytes + size > INBOX_BYTES:
                # Not acknowledged, not remembered: the service sends it again at the next
                # birth.
                self.log("app: command inbox full, dropping a command")
                return
            # Decoded at once: the payload is a view into the MQTT client's buffer, which the
            # next packet overwrites.
            if size >= LARGE_COMMAND:
                gc.collect()  # as much of the heap in one piece as there can be
            try:
                command = self._decode(payload)
            except MemoryError:
                # The largest commands (a schedule of 24 slots with long URLs) decode into
                # more than their size; with such a schedule held as well, its URLs make room
                # (the control task reads them back from flash).
                self.schedule.shed_urls()
                gc.collect()
                try:
                    command = self._decode(payload)
                except MemoryError:
                    # Not acknowledged, not remembered: sent again at the next birth.
                    self.log("app: no memory to decode a command of", size, "bytes")
                    return
            self.inbox.append((command, size))
            self.inbox_bytes += size
            if size >= LARGE_COMMAND:
                gc.collect()
            return
        if topic == self.state_topic and len(payload) <= MAX_PAYLOAD:
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

    @staticmethod
    def _decode(payload):
        try:
            return commands.decode(payload)
        except commands.Rejected as exc:
            return exc

    # -- what plays ---------------------------------------------------------------------------

    def _on_player_end(self, why):
        self.ended = why  # handled in the control loop

    def _check_end(self):
        """Deal with playback that ended by itself (the stream ended or broke)."""
        why = self.ended
        if why is None:
            return
        self.ended = None
        self.log("app: playback of", self.src, self.ref, why)
        if why == "stream_error":
            self.raise_event("stream_error", "%s:%s" % (self.src, self.ref))
            if self.src == "sched":
                # Tried again while the slot lasts; a retry that fails is the same failure.
                self.slot_failed = self.slot_key
                self.slot_key = None
                self.slot_retry = self.clock.unix_time() + SLOT_RETRY_S
        self._stopped(why)

    def _stopped(self, why):
        if self.src != "none":
            self.raise_event("play_stopped", why + ":" + self.ref)
        self.src, self.ref, self.rank, self.url = "none", None, -1, None
        self.why = why
        self.until_ms = None

    async def _stop(self, why):
        await self.player.stop()
        self._stopped(why)

    async def _start(self, src, ref, rank, url, why, duration=None):
        """Play ``url`` in place of whatever plays. None once it plays, else the failure."""
        self._check_end()
        if self.src != "none":
            await self._stop("preempted")
        self.src, self.ref, self.rank, self.url, self.why = src, ref, rank, url, why
        self.until_ms = None
        try:
            await self.player.play(url, PLAY_TIMEOUT_S)
        except Exception as exc:  # PlayerError, or no memory left for the connection
            self.log("app: could not play", url, repr(exc))
            self.src, self.ref, self.rank, self.url = "none", None, -1, None
            self.why = "stream_error"
            return exc.reason if isinstance(exc, PlayerError) else "stream_error"
        self.ended = None  # an end reported before this stream started was the old one's
        if duration:
            self.until_ms = self.board.uptime_ms() + duration * 1000
        self.raise_event("play_started", src + ":" + ref)
        return None

    # -- commands -----------------------------------------------------------------------------

    def final(self, command_id, status, why=None):
        self._final(command_id, status, why)

    def ack(self, command_id, status, why=None, dup=False):
        self._ack(command_id, status, why, dup)

    def _final(self, command_id, status, why=None):
        """Remember a final outcome (before telling it), then acknowledge it."""
        try:
            self.ledger.remember(command_id, status, why)
        except OSError as exc:
            self.log("app: could not remember command", command_id, repr(exc))
        self._ack(command_id, status, why)

    async def _command(self, cmd):
        """Carry out a decoded command (a dict of commands.decode, or its Rejected)."""
        if isinstance(cmd, commands.Rejected):
            if cmd.command_id is None:
                self.log("app: command without a usable id:", cmd.reason)
                self.raise_event("bad_command", cmd.reason)
                return
            cid, rejection, cmd = cmd.command_id, cmd.reason, None
        else:
            cid, rejection = cmd["id"], None
        known = self.ledger.get(cid)
        if known is not None:
            self.log("app: command", cid, "again: answered", known[1])
            self._ack(cid, known[1], known[2], dup=True)
            return
        if cmd is None:
            self.log("app: command", cid, "rejected:", rejection)
            self._final(cid, "rejected", rejection)
            return
        if self.clock.synced and self.clock.unix_time() > cmd["exp"]:
            self._final(cid, "expired", "expired")
            return
        op = cmd["op"]
        self.log("app: command", cid, op)
        if op == "play":
            if cmd["pri"] < self.rank:
                self._final(cid, "rejected", "lower_priority")
                return
            try:
                self.ledger.remember(cid, "accepted")
            except OSError as exc:
                self.log("app: could not remember command", cid, repr(exc))
            self._ack(cid, "accepted")
            failure = await self._start("cmd", cid, cmd["pri"], cmd["url"], "command", cmd["dur"])
            if failure is None:
                self._final(cid, "done")
            else:
                self.raise_event("stream_error", "cmd:" + cid)
                self._final(cid, "failed", failure)
        elif op == "stop":
            if self.src == "none":
                self._final(cid, "done", "nothing_playing")
            elif cmd["pri"] < self.rank:
                self._final(cid, "rejected", "lower_priority")
            else:
                await self._stop("stopped")
                self._final(cid, "done")
        elif op == "volume":
            self.board.set_volume(cmd["vol"])
            self._final(cid, "done")
        elif op == "reboot":
            self._final(cid, "done")
            self.reboot = True
        elif op == "config":
            from loa import config  # rarely needed: loaded for the command, then let go

            try:
                config.update(cmd["set"], self.config_path)
            except OSError as exc:
                self.log("app: config not written:", repr(exc))
                self._final(cid, "failed", "storage")
                return
            finally:
                del config
                unload("config")
            for key in cmd["set"]:  # effective at the next connection
                value = cmd["set"][key]
                self.cfg[key] = float(value) if key == "telemetry_interval" else value
            self._final(cid, "done")
        elif op == "schedule":
            try:
                self.schedule.store(cmd["ver"], cmd["tz"], cmd["slots"])
            except OSError as exc:
                self.log("app: schedule not written:", repr(exc))
                self._final(cid, "failed", "storage")
                return
            self.log("app: schedule", cmd["ver"], "with", len(cmd["slots"]), "slots")
            self._final(cid, "done")
        elif op == "update":
            self._offer(cid, cmd["raw"])

    # -- updates (loa/update.py) --------------------------------------------------------------

    def _update_needs_room(self):
        """No heap to carry on the update: once, after a reset (its steps at boot,
        loa/update.py); else it is tried again at the next tick."""
        unload("update")
        gc.collect()
        rec = files.read_json(UPDATE_RECORD)
        if (self.src == "none" and rec is not None and not rec.get("reset")
                and rec.get("st") in ("offered", "downloading")):
            rec["reset"] = True
            rec["boot"] = True
            files.write_json(UPDATE_RECORD, rec)
            self.log("app: no heap for the update now: going on after a reset")
            self.update_waiting = False
            self.reboot = True

    def _keep_offer(self, cid, raw):
        try:
            files.write_json(UPDATE_COMMAND, {"id": cid, "raw": raw})
            return True
        except (OSError, MemoryError):
            return False

    def _offer(self, cid, raw, retry=True):
        from loa import offer  # loaded for the command, then let go

        try:
            offer.offer(self, cid, raw)
        except MemoryError:
            rec = files.read_json(UPDATE_RECORD)
            if rec is not None and rec.get("id") == cid and rec.get("st") == "offered":
                # Accepted, not started: the control task starts it (or resets to make room).
                self.update = None
                self.update_waiting = True
            elif self.src != "none" and self.update_later is None:
                # No heap for its checks beside the stream: checked again once it ends.
                self.update_later = (cid, raw, retry)
                self.log("app: update", cid, "checked once the stream ends")
            elif retry and self._keep_offer(cid, raw):
                # Nothing plays and still no heap: once, checked first after a reset.
                self.reboot = True
                self.log("app: update", cid, "checked after a reset")
            else:
                self._final(cid, "failed", "no_memory")
        finally:
            del offer
            unload("offer")
            if self.update is None:
                unload("update")

    def resume_update(self, boot=True):
        """Carry on, confirm or report an update the record says is not final. At boot it
        waits until the receiver has reported, so that what it tells goes out in the session it
        is sent in and loa/update.py is not held beside the first connection: the new version
        then confirms itself (_first_report), the old one reports a rollback or carries the
        update on (the control task)."""
        rec = files.read_json(UPDATE_RECORD)
        if rec is None or rec.get("st") in UPDATE_FINAL or not isinstance(rec.get("id"), str):
            return
        if boot:
            if rec.get("slot") == self.slot:
                self.confirming = True
            else:
                self.update_waiting = True
            return
        rec = None
        from loa import update

        self.update = update.resume(self)
        del update
        if self.update is None:
            unload("update")

    def _first_report(self):
        """The birth and the first report are out: a trial slot becomes the active one, and the
        update that installed it is confirmed."""
        if self.trial:
            self.board.checkpoint("trial")
        if self.on_first_online is not None:
            hook, self.on_first_online = self.on_first_online, None
            hook()
            self.board.checkpoint("committed")
        if self.confirming:
            self.confirming = False
            try:
                self.resume_update(False)  # the new version confirmed (loa/update.py, resume)
            except MemoryError:  # confirmed by the control task once there is room
                unload("update")
                self.update_waiting = True

    def _trial_expired(self):
        """The trial version did not connect and report in time: back to the old one."""
        self.log("app: no connection within the trial time: back to the active slot")
        if files.read_json(UPDATE_RECORD) is not None:
            from loa import update

            update.trial_ended("no_connection")
            del update
            unload("update")
        self.on_first_online = None
        self.reboot = True

    # -- the schedule -------------------------------------------------------------------------

    async def _run_schedule(self):
        """Start the slot in force unless something of higher priority plays; stop a slot's
        playback when its slot is over. Only by a synced clock (docs/protocol.md)."""
        if not self.clock.synced:
            return
        now = self.clock.unix_time()
        schedule = self.schedule
        i = schedule.current(now)
        slot_id = schedule.ids[i] if i >= 0 else ""
        if self.src == "sched" and self.ref != slot_id:
            await self._stop("ended")
        if i < 0:
            return
        key = (slot_id, local_day(now, schedule.tz))
        if key == self.slot_key or now < self.slot_retry:
            return
        self.slot_key = key
        if self.src == "sched" and self.ref == slot_id:
            return  # already playing it (the schedule was replaced by one with this slot)
        if schedule.ranks[i] < self.rank:
            self.log("app: slot", slot_id, "passed over: something of higher priority plays")
            return
        if schedule.volumes[i] != NO_VOLUME:
            self.board.set_volume(schedule.volumes[i])
        failure = await self._start("sched", slot_id, schedule.ranks[i], schedule.urls[i], "schedule")
        if failure is not None:
            self.slot_key = None
            self.slot_retry = self.clock.unix_time() + SLOT_RETRY_S
            if self.slot_failed != key:
                self.slot_failed = key
                self.raise_event("stream_error", "sched:" + slot_id)

    # -- board readings -----------------------------------------------------------------------

    def _alarm(self, kind, bad, good):
        """Raise ``kind`` once when ``bad``; True when ``good`` clears it."""
        alarms = self.alarms
        if bad and kind not in alarms:
            alarms.append(kind)
            self.raise_event(kind)
        elif good and kind in alarms:
            alarms.remove(kind)
            return True
        return False

    def _check_board(self):
        board = self.board
        vin = board.supply_voltage()
        if vin is not None:
            self._alarm("low_supply", vin < LOW_SUPPLY_V, vin > SUPPLY_OK_V)
        temp = board.temperature()
        if temp is not None:
            self._alarm("overheat", temp > OVERHEAT_C, temp < COOL_C)
        amp = board.amp_state()
        self.amp_ticks = self.amp_ticks + 1 if amp == self.amp_seen else 1
        self.amp_seen = amp
        steady = self.amp_ticks >= AMP_CHECKS
        if self._alarm("amp_fault", steady and amp == "fault", steady and amp == "on"):
            self.raise_event("amp_recovered")

    # -- the control and clock tasks ----------------------------------------------------------

    def _alive(self, name="session"):
        if self.supervisor is not None:
            self.supervisor.alive(name)

    async def control(self):
        """Commands, the schedule and the end of playback, connected or not."""
        if self.supervisor is not None:
            self.supervisor.register("control", CONTROL_LIMIT_MS)
        while True:
            self._alive("control")
            try:
                self._check_end()
                while self.inbox:
                    command, size = self.inbox.pop(0)
                    self.inbox_bytes -= size
                    await self._command(command)
                    self._check_end()
                if self.until_ms is not None and self.board.uptime_ms() >= self.until_ms:
                    await self._stop("ended")
                if self.schedule.shed:
                    self.schedule.load()  # the URLs let go for a large command (on_message)
                if self.update_later is not None and self.src == "none" and self.reported:
                    cid, raw, retry = self.update_later
                    self.update_later = None
                    gc.collect()
                    self._offer(cid, raw, retry)
                if self.update_waiting and self.reported and (self.src == "none" or gc.mem_free() >= UPDATE_ROOM):
                    try:
                        self.resume_update(False)
                        self.update_waiting = False
                    except MemoryError:
                        self._update_needs_room()
                await self._run_schedule()
                self._check_board()
            except Exception as exc:  # a bug must not end commands and the schedule for good
                self.log("app: control error:", repr(exc))
            await asyncio.sleep_ms(TICK_MS)

    async def keep_time(self):
        """Sync the clock after every link-up (sync_wanted) and every SYNC_EVERY_MS."""
        if self.supervisor is not None:
            self.supervisor.register("clock", CLOCK_LIMIT_MS)
        while True:
            self._alive("clock")
            due = self.next_sync_ms is not None and self.board.uptime_ms() >= self.next_sync_ms
            if (self.sync_wanted or due) and self.board.link_is_up():
                self.sync_wanted = False
                try:
                    await self.sync_clock()
                except Exception as exc:
                    self.log("app: clock sync error:", repr(exc))
                    self.next_sync_ms = self.board.uptime_ms() + SYNC_RETRY_MS
            await asyncio.sleep_ms(TICK_MS)

    async def sync_clock(self):
        cfg = self.cfg
        skew = None
        if cfg["ntp"]:
            try:
                skew = await self.clock.sync_ntp(cfg["ntp"], cfg["ntp_port"])
            except OSError as exc:
                self.log("app: sntp failed:", repr(exc))
        if skew is None:
            skew = self.clock.sync_modem()
        now = self.board.uptime_ms()
        if skew is None:
            self.next_sync_ms = now + SYNC_RETRY_MS
            self.log("app: clock not synced; next try in", SYNC_RETRY_MS // 1000, "s")
            return
        self.next_sync_ms = now + SYNC_EVERY_MS
        source = self.clock.source
        self.log("app: clock synced by", source, "skew", skew, "ms")
        if abs(skew) > CLOCK_EVENT_MS:
            self.raise_event("clock_sync", "%s:%d" % (source, skew))

    # -- one session --------------------------------------------------------------------------

    def _new_client(self, session):
        cfg = self.cfg
        will = (self.state_topic, self._state("offline", "lost"), 1, True)
        if cfg["tls"] and self.ssl is None:
            gc.collect()
            self.ssl = self.board.ssl_context(cfg["ca"], bool(cfg["ca"]))
        return mqtt.Client(
            cfg["id"], username=cfg["id"], password=cfg["password"], keepalive=cfg["keepalive"],
            will=will, on_message=self.on_message, connect_timeout=cfg["connect_timeout"],
            ack_timeout=cfg["ack_timeout"], ack_retries=cfg["ack_retries"],
            ping_timeout=cfg["ping_timeout"], ssl=self.ssl if cfg["tls"] else None,
            server_hostname=cfg["server_name"] or None, log=self.log, buffer=self.packet_buffer)

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
            # Commands before the birth: the service sends what is pending when it sees a
            # birth, and with a clean session a command published before the subscription
            # would be lost. The state topic after it, so that the retained state it brings is
            # this birth or what came after.
            granted = await client.subscribe([(self.cmd_topic, 1)])
            self.birth = self._state("online", reason, off)
            await client.publish(self.state_topic, self.birth, 1, True)
            self.born = True
            self.births += 1
            self.seq = 0
            self.play_sent = None  # the play status goes out again after every birth
            self.log("app: online, session", session, reason, "" if off is None else off)
            granted += await client.subscribe([(self.state_topic, 1)])
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
        return client

    async def _send_queued(self, client):
        """Acks, then the events kept (with their own time), then the play status if it
        changed. Each leaves its queue only once the broker has it."""
        while self.update_status:
            await client.publish(self.update_topic, self.update_status[0], 1, True)
            self.update_status.pop(0)
        while self.acks:
            await client.publish(self.ack_topic, self._ack_message(*self.acks[0]), 1)
            self.acks.pop(0)
        while self.events:
            ts, kind, detail = self.events[0]
            await client.publish(self.event_topic, self._event(kind, detail, ts), 1)
            self.events.pop(0)
        view = self._play_view()
        if view != self.play_sent:
            await client.publish(self.play_topic, self._play_status(view), 1, True)
            self.play_sent = view

    async def _serve(self, client):
        """Queued messages and telemetry every interval until the connection ends, a stop is
        asked for, or a reboot command was acknowledged."""
        interval = int(self.cfg["telemetry_interval"] * 1000)
        next_report = self.board.uptime_ms()
        while not client.closed.is_set() and not self.board.stop_requested:
            self._alive()
            now = self.board.uptime_ms()
            try:
                if self.reassert:
                    self.reassert = False
                    await client.publish(self.state_topic, self.birth, 1, True)
                await self._send_queued(client)
                if self.reboot and not self.acks and not self.update_status:
                    break
                if now - next_report >= 0:
                    next_report += interval
                    if now - next_report >= 0:  # fell behind (a long stall): no burst
                        next_report = now + interval
                    await client.publish(self.telemetry_topic, self.telemetry())
                    self.seq += 1
                    if not self.reported:
                        self.reported = True
                        self._first_report()
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
        while self.board.uptime_ms() < end and not self._leaving():
            self._alive()
            await asyncio.sleep_ms(TICK_MS)

    def _leaving(self):
        return self.board.stop_requested or self.reboot

    async def run(self):
        """Connect, serve, reconnect, until a stop or a reboot is asked for; then say
        goodbye (and reset the board for a reboot)."""
        cfg = self.cfg
        failures = 0
        link_was_up = False
        if self.supervisor is not None:
            self.supervisor.register("session", SESSION_LIMIT_MS)
        while not self._leaving():
            self._alive()
            if self.trial_until is not None and not self.reported and self.board.uptime_ms() > self.trial_until:
                self._trial_expired()
                break
            client = None
            try:
                await self.board.link_up()
                if not link_was_up:
                    self.sync_wanted = True  # the clock is synced after every link-up
                link_was_up = True
                client = await self._establish()
            except (OSError, mqtt.MQTTError) as exc:
                failures += 1
                link_was_up = link_was_up and self.board.link_is_up()
                self.log("app: connect attempt failed:", repr(exc))
            except Exception as exc:  # a bug or a bad file must not end the receiver's life
                failures += 1
                self.log("app: unexpected error, retrying:", repr(exc))
            if client is not None:
                failures = 0
                await self._serve(client)
                if self._leaving() and not client.closed.is_set():
                    break
                self._lost(client)
                link_was_up = self.board.link_is_up()
            ceiling = min(cfg["backoff_cap"], cfg["backoff_base"] * 2 ** min(failures, 16))
            await self._pause(random.uniform(0, ceiling))
        await self.goodbye()
        if self.reboot:
            self.log("app: rebooting")
            self.board.reset()

    async def goodbye(self):
        await self.player.stop()
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


async def _main(board, cfg, state, log, on_first_online=None, config_path="config.json", slot="dev", trial=False):
    supervisor = Supervisor(board, cfg["wdt_ms"], log)
    start = getattr(board, "start", None)
    if start is not None:
        start()
    tasks = [asyncio.create_task(supervisor.run())]
    record = files.read_json(UPDATE_RECORD)
    if record is not None and record.get("boot"):
        # An update's check and download before the receiver is made (update.py), in the heap
        # its buffers, TLS context and schedule would take; the board then resets, and the
        # receiver made after it carries the update on.
        record = None
        from loa import update

        await update.steps_at_boot(board, cfg, state, supervisor, log)
        del update
        unload("update")
        gc.collect()
    receiver = Receiver(board, cfg, state, supervisor, log, config_path, slot, trial)
    receiver.on_first_online = on_first_online
    record = files.read_json(UPDATE_COMMAND)
    if record is not None:  # checked first, once, in this heap (Receiver._offer)
        import os

        os.remove(UPDATE_COMMAND)
        if isinstance(record.get("id"), str) and isinstance(record.get("raw"), dict):
            receiver.update_later = (record["id"], record["raw"], False)
    record = None
    receiver.resume_update()
    tasks += [asyncio.create_task(receiver.control()), asyncio.create_task(receiver.keep_time())]
    try:
        await receiver.run()
    finally:
        for task in tasks:
            task.cancel()


def main(slot="dev", trial=False, config_path="config.json", state_path="state.json"):
    """Entry point (main.py calls it with the slot it chose)."""
    from loa import config

    cfg = config.load(config_path)
    del config
    unload("config")  # needed again only for a config command
    board = hal.make(cfg)
    state = State(state_path)
    print("loa:", FIRMWARE, "slot", slot, "trial" if trial else "", "board", board.name,
          "reset", board.reset_cause(), "id", cfg["id"], "session", state.session)
    try:
        asyncio.run(_main(board, cfg, state, print, _committer(slot) if trial else None, config_path, slot, trial))
    except Exception:
        if trial:  # the old version, booted next, reports the update rolled back for this
            from loa import update

            update.trial_ended("crashed")
        raise


def _committer(slot):
    def commit():
        from loa import slots

        slots.commit(slot)
        del slots
        unload("slots")
        print("loa: slot", slot, "committed")

    return commit
