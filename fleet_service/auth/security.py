"""Secrets: slow hashes for the passwords people choose, fast hashes for random tokens.

A person's password is guessable, so it gets scrypt with its parameters stored beside the
hash (they can be raised later without breaking stored hashes). API tokens and receiver
passwords are long random values: nobody can guess them, so SHA-256 is as strong as a slow
hash and keeps a reconnect storm of thousands of receivers cheap to authenticate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt cost: 2**15 * 8 * 128 bytes = 32 MiB and about 0.1 s per login on a small server.
# Stored with each hash, so raising it only affects passwords set afterwards.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_DKLEN = 32
_SALT_BYTES = 16
_SCHEME = "scrypt"

# A hash computed when the user does not exist, so that "no such user" and "wrong password"
# take the same time and an attacker cannot list usernames by timing the login.
_DUMMY_HASH: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # maxmem must exceed 128 * n * r, or OpenSSL refuses the parameters.
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=256 * n * r + 1024 * 1024)


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64 salt and hash)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _SCRYPT_DKLEN)
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches ``stored``. ``stored`` None (no password set, or no such
    user) still costs one scrypt, and is False."""
    global _DUMMY_HASH
    if stored is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
        stored, usable = _DUMMY_HASH, False
    else:
        usable = True
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected) and usable


def new_token(nbytes: int) -> str:
    """A URL-safe random token of ``nbytes`` bytes of entropy."""
    return secrets.token_urlsafe(nbytes)


def token_hash(token: str) -> str:
    """SHA-256 hex of a random token: what the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hashes_match(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))
