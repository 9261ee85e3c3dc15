"""Ed25519 keys of firmware releases: the signing key stays on the engineers' offline machine
(``loa firmware keygen``, ``loa firmware sign``); the service holds only public keys
(LOA_FIRMWARE_KEYS) and the receivers have them built in.

A key is named by its key id: the first 16 hex digits of the SHA-256 of its 32 raw bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import pkcs12

ALGORITHM = "ed25519"
KEY_ID_HEX = 16
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
# A key file is a few hundred bytes; anything larger is not one.
_KEY_FILE_MAX = 16 * 1024
# Where `loa firmware keygen` and `sign` take the private key's passphrase from when it is set
# (scripts); else they ask for it on the terminal.
PASSPHRASE_ENV = "LOA_FIRMWARE_KEY_PASSPHRASE"
MIN_PASSPHRASE_CHARS = 12
# An encrypted key is a PKCS#12 file: the one format of the library whose key derivation's cost
# can be set (its PKCS#8 PEM uses PBKDF2 with 2,048 rounds). PBKDF2-HMAC-SHA256 with OWASP's
# 600,000 rounds, AES-256-CBC; about 0.1 s on a laptop, each guess as much for an attacker.
PASSPHRASE_KDF_ROUNDS = 600_000
_PKCS12_NAME = b"loa firmware release key"
_PEM = b"-----BEGIN"


class KeyProblem(ValueError):
    """A key that cannot be read, with what is wrong in both languages."""

    def __init__(self, message_vi: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_vi = message_vi
        self.message_en = message_en


class PassphraseNeeded(KeyProblem):
    """The private key file is encrypted and no passphrase was given."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:KEY_ID_HEX]


def public_base64(key: Ed25519PublicKey) -> str:
    """The 32 raw bytes in base64: what LOA_FIRMWARE_KEYS takes and the firmware builds in."""
    return base64.b64encode(raw_public(key)).decode("ascii")


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise KeyProblem(f"mật khẩu của khoá quá ngắn: cần ít nhất {MIN_PASSPHRASE_CHARS} ký tự",
                        f"the key's passphrase is too short: at least {MIN_PASSPHRASE_CHARS} characters")


def generate(prefix: Path, *, force: bool = False,
             passphrase: str | None = None) -> tuple[Path, Path, Ed25519PublicKey]:
    """A new key pair: ``PREFIX.key`` (mode 0600; PKCS#12 encrypted with ``passphrase`` when
    one is given, else PKCS#8 PEM) and ``PREFIX.pub`` (PEM). Refuses to replace either file
    unless ``force``."""
    private_path = prefix.with_name(prefix.name + PRIVATE_SUFFIX)
    public_path = prefix.with_name(prefix.name + PUBLIC_SUFFIX)
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise KeyProblem(f"{path} đã có; dùng --force để ghi đè (khoá cũ sẽ mất)",
                                f"{path} exists; use --force to replace it (the old key is lost)")
    if passphrase is not None:
        _check_passphrase(passphrase)
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    if passphrase is None:
        data = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    else:
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                      .kdf_rounds(PASSPHRASE_KDF_ROUNDS)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                      .hmac_hash(hashes.SHA256())
                      .build(passphrase.encode("utf-8")))
        data = pkcs12.serialize_key_and_certificates(_PKCS12_NAME, private, None, None, encryption)
    _write(private_path, data, 0o600)
    _write(public_path, public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return private_path, public_path, public


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written beside its place and renamed over it, created with ``mode`` from the start (a
    private key is never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_private(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    """The private key of ``path``: a PKCS#8 PEM, or a PKCS#12 file that ``passphrase`` opens
    (a key that has none ignores it)."""
    try:
        data = path.read_bytes()[:_KEY_FILE_MAX]
    except OSError as exc:
        raise KeyProblem(f"Không đọc được khoá {path}: {exc.strerror}", f"Cannot read the key {path}: {exc.strerror}") from None
    key: object
    if data.lstrip().startswith(_PEM):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise KeyProblem(f"{path} không phải khoá riêng Ed25519 (PEM không mật khẩu, hoặc tệp của loa firmware keygen)",
                            f"{path} is not an Ed25519 private key (unencrypted PEM, or a file of loa firmware "
                            f"keygen): {exc}") from None
    elif not data.startswith(b"\x30"):  # neither PEM nor DER
        raise KeyProblem(f"{path} không phải tệp khoá", f"{path} is not a key file")
    else:
        if passphrase is None:
            raise PassphraseNeeded(f"khoá {path} có mật khẩu: nhập khi được hỏi, hoặc đặt {PASSPHRASE_ENV}",
                                   f"the key {path} is protected by a passphrase: type it when asked, or set "
                                   f"{PASSPHRASE_ENV}")
        try:
            key, _, _ = pkcs12.load_key_and_certificates(data, passphrase.encode("utf-8"))
        except (ValueError, TypeError):
            raise KeyProblem(f"sai mật khẩu của khoá {path}, hoặc tệp khoá hỏng",
                            f"wrong passphrase for the key {path}, or a damaged key file") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path} không phải khoá Ed25519", f"{path} is not an Ed25519 key")
    return key


def load_public(entry: str) -> Ed25519PublicKey:
    """One trusted key as LOA_FIRMWARE_KEYS gives it: the 32 raw bytes in base64 (as keygen
    prints them), or the path of a public key file (PEM, or that base64 on one line)."""
    text = entry.strip()
    raw = _raw_from_base64(text)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(text)
    try:
        data = path.read_bytes()[:_KEY_FILE_MAX]
    except OSError as exc:
        raise KeyProblem(f"Khoá công khai '{text}' không phải base64 của 32 byte, cũng không đọc được như tệp "
                        f"({exc.strerror})",
                        f"The public key '{text}' is neither 32 bytes in base64 nor a readable file ({exc.strerror})") from None
    raw = _raw_from_base64(data.decode("ascii", "replace").strip())
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"Tệp {path} không phải khoá công khai Ed25519 (PEM hoặc base64)",
                        f"The file {path} is not an Ed25519 public key (PEM or base64)")
    return key


def _raw_from_base64(text: str) -> bytes | None:
    if len(text) != 44:  # 32 bytes in base64
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == RAW_KEY_BYTES else None


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
