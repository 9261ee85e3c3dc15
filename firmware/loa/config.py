# Configuration: a defaults dict, overridden by the per-device file "config.json" (written
# when the receiver is provisioned: its id, password, server and APN). Only the keys the
# device file sets differ from the defaults, so a firmware update can change a default for
# every receiver that did not override it.

from loa import files

DEFAULTS = {
    # Identity: the receiver id is the MQTT client id, username and topic level.
    "id": "",
    "password": "",
    # Broker. Receivers on 4G use TLS on 8883 (docs/mosquitto.md).
    "host": "",
    "port": 8883,
    "tls": True,
    "ca": "ca.crt",          # CA certificate (PEM or DER) verifying the broker; "" = no check
    "server_name": "",       # TLS server name if it is not "host"
    # Link: "ppp" (4G modem), "wifi" (bench), "host" (the unix port: the host's network).
    "link": "ppp",
    "apn": "v-internet",     # Viettel; Vinaphone "m3-world", Mobifone "m-wap"
    "sim_pin": "",
    "wifi_ssid": "",
    "wifi_password": "",
    # MQTT session. Keepalive: the broker publishes the Will after 1.5x this without traffic.
    # 300 s with telemetry every 300 s keeps a receiver under 10 MB of 4G data a month
    # (bench/RESULTS.md); a shorter keepalive notices a dead link sooner at a cost in pings.
    "keepalive": 300,
    "connect_timeout": 10,   # TCP (+TLS) connect, and CONNECT to CONNACK, each
    "ack_timeout": 10,       # PUBLISH to PUBACK, SUBSCRIBE to SUBACK
    "ack_retries": 2,        # retransmissions (DUP) of an unacknowledged QoS 1 PUBLISH
    "ping_timeout": 10,      # PINGREQ to PINGRESP; longer and the connection is dead
    # Reconnect delay: uniform in [0, min(cap, base * 2**failures)] ("full jitter"), so that
    # thousands of receivers coming back after an outage spread out.
    "backoff_base": 1.0,
    "backoff_cap": 120.0,
    # Application.
    "telemetry_interval": 300.0,  # seconds; a float so that fractions are accepted
    # Clock: SNTP server (synced after every link-up and every 6 h; "" = the modem's network
    # time only). The Vietnamese zone of the NTP pool answers nearest.
    "ntp": "vn.pool.ntp.org",
    "ntp_port": 123,
    # Watchdog: the board resets if the supervisor does not feed it for this long.
    "wdt_ms": 60000,
    # Updates (loa/update.py): the board's hardware family (which releases it can run; "hw" in
    # births), a release signing key trusted besides those built in (loa/keys.py; "" = none),
    # and how long a new version on trial has to connect and report before the old one
    # boots again.
    "hw": "esp32-a7670",
    "release_key": "",
    "trial_s": 300,
}

REQUIRED = ("id", "password", "host")


def _valid_id(value):
    if not 1 <= len(value) <= 64:
        return False
    for c in value:
        if not (c.isalpha() or c.isdigit() or c in "-_") or ord(c) > 127:
            return False
    return True


def load(path="config.json", overrides=None):
    """Defaults, then the device file, then ``overrides``. Raises ValueError if a required
    key is missing or a value has the wrong type."""
    cfg = dict(DEFAULTS)
    device = files.read_json(path)
    for source in (device, overrides):
        if source:
            for key in source:
                cfg[key] = source[key]
    for key in REQUIRED:
        if not cfg[key]:
            raise ValueError("config: " + key + " is not set")
    for key in DEFAULTS:
        default = DEFAULTS[key]
        value = cfg[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
        elif type(value) is not type(default):
            raise ValueError("config: " + key + " has the wrong type")
    if not _valid_id(cfg["id"]):
        raise ValueError("config: id must be 1-64 letters, digits, - or _")
    return cfg


def save(cfg, path="config.json"):
    """Store the keys of ``cfg`` that differ from the defaults (atomically)."""
    device = {}
    for key in cfg:
        if key not in DEFAULTS or cfg[key] != DEFAULTS[key]:
            device[key] = cfg[key]
    files.write_json(path, device)


def update(settings, path="config.json"):
    """Write ``settings`` into the device file (atomically), keeping everything else in it.
    Raises OSError if the file cannot be read back or written: rewriting it from nothing
    would lose the receiver's login."""
    device = files.read_json(path)
    if device is None:
        raise OSError("config: " + path + " is unreadable")
    for key in settings:
        device[key] = settings[key]
    files.write_json(path, device)
