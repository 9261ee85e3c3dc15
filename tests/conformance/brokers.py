"""A permissive Mosquitto for the checks the production ACL makes impossible.

Under the production configuration a receiver cannot publish outside its own topics (the
broker drops such a message silently, so the suite could not see the attempt), and nobody but
the receiver may publish on its state topic (so a stale state cannot be planted). This broker
has plain password-file logins and an ACL that lets every login read and write every topic: a
receiver's stray publication becomes visible, and the tester login can play a late Will.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.mosquitto import MosquittoServer, mosquitto, write_password_file

TESTER = "conformance-tester"


@dataclass
class PermissiveBroker:
    server: MosquittoServer
    tester_username: str
    tester_password: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port


@contextmanager
def permissive_mosquitto(directory: Path, logins: Mapping[str, str]) -> Iterator[PermissiveBroker]:
    """Mosquitto with ``logins`` (username → password) plus a tester login, all allowed
    everywhere."""
    directory.mkdir(parents=True, exist_ok=True)
    tester_password = secrets.token_urlsafe(12)
    passwords = directory / "passwords"
    write_password_file(passwords, {**logins, TESTER: tester_password})
    acl = directory / "acl"
    acl.write_text(f"user {TESTER}\ntopic readwrite #\n\npattern readwrite #\n")
    config = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    with mosquitto(directory, config) as server:
        yield PermissiveBroker(server, TESTER, tester_password)
