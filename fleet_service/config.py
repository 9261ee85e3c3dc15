"""One settings object for the whole service, read from the environment (prefix LOA_)."""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Secrets that ship in examples and must never reach production.
_KNOWN_DEFAULT_SECRETS = {"", "changeme", "change-me", "secret", "loa", "password", "admin", "loa-admin"}
# Shortest secret accepted in production (a generated one is longer: see docs/deploy.md).
_MIN_SECRET_LENGTH = 16
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOA_", env_file=".env", extra="ignore")

    environment: Literal["local", "test", "production"] = "local"
    database_url: str = "sqlite:///./loa.db"
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # MQTT: which broker the service talks to, and the service's own login on it.
    #   embedded:  amqtt inside this process, logins read from the registry (the default)
    #   mosquitto: Mosquitto 2 whose receiver logins the service manages (dynamic security)
    #   external:  any MQTT 3.1.1 broker whose logins are managed elsewhere (e.g. password
    #              files, a cluster's own auth); the service only connects to it
    broker: Literal["embedded", "mosquitto", "external"] = "embedded"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str = "loa-service"
    mqtt_password: str = Field(default_factory=lambda: secrets.token_urlsafe(24))
    # Keepalive the service asks of the broker for its own connection.
    mqtt_keepalive_s: int = 30
    # The embedded broker's TLS listener for receivers (8883 in production), with the same
    # certificate files as Mosquitto's (docs/deploy.md). No port: no TLS listener.
    mqtt_tls_port: int | None = Field(default=None, ge=1, le=65535)
    mqtt_tls_host: str = "0.0.0.0"
    mqtt_tls_certfile: str = ""
    mqtt_tls_keyfile: str = ""
    # The embedded broker closes a connection that sends a larger packet (Mosquitto's
    # production configuration has the same max_packet_size).
    mqtt_max_packet_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    # Failed MQTT logins on the embedded broker, per minute, before further logins are refused
    # unchecked for the rest of the minute. Per address it is generous: many receivers share a
    # carrier's NAT address, and a revoked one keeps retrying.
    mqtt_login_failures_per_address: int = Field(default=120, ge=1)
    mqtt_login_failures_per_receiver: int = Field(default=10, ge=1)

    # Sign-in attempts at /api/v1/auth/token per minute, per client address and per username
    # (each costs a slow password hash); more are answered 429 without being checked.
    api_login_attempts_per_address: int = 20
    api_login_attempts_per_user: int = 10
    # Largest request body the API reads; larger ones are refused (413) before anything else,
    # sign-in included. The largest legitimate body, a schedule of 24 slots, is under 50 KB.
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Receivers: what the service expects of them. The inactivity timeout catches a link that
    # died without the broker noticing (or a receiver whose application hung while the MQTT
    # stack still answers pings): three missed telemetry reports plus slack.
    telemetry_interval_s: float = 300.0
    inactivity_timeout_s: float = 960.0
    # After the service (re)starts it waits this long before it trusts silence: retained state
    # arrives first, and receivers that were online get a chance to report.
    startup_grace_s: float = 30.0
    max_payload_bytes: int = 4096
    # Alerts: how often the leading worker evaluates the rules. Pending times are minutes, and
    # a turn's cost is mostly fixed, so this is most of what alerts cost a quiet fleet.
    alert_eval_interval_s: float = Field(default=10.0, ge=1.0, le=300.0)

    # Mosquitto dynamic security: the control topic is reached with the admin login.
    mosquitto_admin_username: str = "loa-admin"
    mosquitto_admin_password: str = ""

    # --- telemetry into InfluxDB (docs/telemetry.md) ---
    # No URL: telemetry is not written (the status at /api/v1/telemetry/status says so).
    influx_url: str = ""
    # v2: /api/v2/write (InfluxDB 2.x, 3.x, 1.8+, VictoriaMetrics); v1: /write (InfluxDB < 1.8).
    influx_api: Literal["v2", "v1"] = "v2"
    influx_token: str = ""
    influx_org: str = "loa"
    influx_bucket: str = "loa"
    # Where batches InfluxDB cannot take now wait, and how large that may grow: 1 GiB is about
    # 17 hours of a province's telemetry (2,500 receivers, one ~400-byte point a minute each).
    influx_buffer_dir: str = "./telemetry-buffer"
    influx_buffer_max_bytes: int = Field(default=1024**3, ge=1024)
    # A batch is sent when it has this many points or its first point is this old.
    influx_batch_size: int = Field(default=5000, ge=1, le=100_000)
    influx_flush_interval_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _refuse_influx_without_token_in_production(self) -> Settings:
        if self.environment == "production" and self.influx_url and self.influx_api == "v2" \
                and self.influx_token in _KNOWN_DEFAULT_SECRETS:
            raise ValueError("LOA_INFLUX_TOKEN must be set to a real token in production")
        return self
    # --- end of telemetry settings ---

    # --- firmware releases (docs/firmware-updates.md) ---
    # The public keys a release's signature must verify against: one, or two while the signing
    # key is being replaced. Comma-separated; each the key's 32 bytes in base64 (as
    # `loa firmware keygen` prints them) or the path of its .pub file.
    firmware_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The address receivers reach downloads at, where rollouts tell them to fetch a release
    # (<this>/api/v1/firmware/download/<release id>); e.g. https://loa.example behind a proxy.
    # Empty: the download listener's address when it runs, else http://<api_host>:<api_port>
    # (127.0.0.1 for one listening on every address).
    firmware_base_url: str = Field(default="", max_length=160, pattern=r"^(https?://\S+)?$")
    # The download listener: the same download path as the API's, answered by a small HTTP/1.1
    # server of its own in each API process, at a fraction of the API's CPU per request
    # (fleet_service/downloads/listener.py). No port: not started (the API's route still
    # answers); 0: a free port (tests). Empty host: api_host.
    download_port: int | None = Field(default=None, ge=0, le=65535)
    download_host: str = ""

    @field_validator("firmware_keys", mode="before")
    @classmethod
    def _split_firmware_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("firmware_keys")
    @classmethod
    def _firmware_keys_readable(cls, value: list[str]) -> list[str]:
        if len(value) > 2:
            raise ValueError("LOA_FIRMWARE_KEYS takes one key, or two while the signing key is being replaced")
        from fleet_service.firmware.keys import KeyProblem, load_public

        for entry in value:
            try:
                load_public(entry)
            except KeyProblem as exc:
                raise ValueError(f"LOA_FIRMWARE_KEYS: {exc.message_en}") from None
        return value
    # --- end of firmware settings ---

    # The API's address as people reach it from their phones, for the acknowledge links in
    # alerts (<this>/api/v1/ack/<token>), e.g. https://loa.example. Empty:
    # http://<api_host>:<api_port>.
    public_url: str = Field(default="", max_length=160, pattern=r"^(https?://\S+)?$")

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        secrets_needed = ["mqtt_password"]
        if self.broker == "mosquitto":
            secrets_needed.append("mosquitto_admin_password")
        for name in secrets_needed:
            value = getattr(self, name)
            if value.strip().lower() in _KNOWN_DEFAULT_SECRETS or len(value) < _MIN_SECRET_LENGTH:
                raise ValueError(f"LOA_{name.upper()} must be set to a real secret (at least "
                                 f"{_MIN_SECRET_LENGTH} characters) in production")
        return self

    @model_validator(mode="after")
    def _refuse_clear_text_receiver_logins_in_production(self) -> Settings:
        # Receivers' passwords would cross the 4G network in clear text.
        if self.environment == "production" and self.broker == "embedded" \
                and self.mqtt_host not in _LOOPBACK_HOSTS and self.mqtt_tls_port is None:
            raise ValueError("the embedded broker listens on a network address without TLS: set LOA_MQTT_TLS_PORT "
                             "(with LOA_MQTT_TLS_CERTFILE and LOA_MQTT_TLS_KEYFILE) and keep LOA_MQTT_HOST on "
                             "127.0.0.1 for the service itself")
        return self

    @model_validator(mode="after")
    def _tls_needs_certificate(self) -> Settings:
        if self.mqtt_tls_port is not None and not (self.mqtt_tls_certfile and self.mqtt_tls_keyfile):
            raise ValueError("LOA_MQTT_TLS_PORT needs LOA_MQTT_TLS_CERTFILE and LOA_MQTT_TLS_KEYFILE")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
