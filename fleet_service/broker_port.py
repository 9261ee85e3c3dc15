"""The port through which the registry tells a broker about receiver logins.

The service owns it and the adapters in broker/ implement it, so that the service depends on
no broker: the embedded amqtt broker reads the registry at each login and only needs to drop
live sessions on revoke; Mosquitto's dynamic security plugin is told about each login as it
is created or removed. Calls are synchronous and safe from any thread, because the
registry's callers are both the API (worker threads) and the CLI.

It imports nothing else of the service, so that broker/ may import it (the import-linter
contracts in pyproject.toml hold both sides to that).
"""

from __future__ import annotations

from typing import Protocol


class BrokerAccounts(Protocol):
    def add_receiver(self, receiver_id: str, password: str) -> None:
        """Let ``receiver_id`` log in with ``password`` (replacing any earlier password)."""

    def remove_receiver(self, receiver_id: str) -> None:
        """Refuse further logins and disconnect a live session now, without a restart."""


class RegistryOnlyAccounts:
    """For a broker that reads the registry itself at every login (the embedded broker when no
    service process is running, e.g. from the CLI): nothing to push."""

    def add_receiver(self, receiver_id: str, password: str) -> None:
        return None

    def remove_receiver(self, receiver_id: str) -> None:
        return None
