from __future__ import annotations

from fleet_service.auth.dependencies import Principal
from fleet_service.auth.models import Role
from fleet_service.auth.security import hash_password, token_hash, verify_password


def test_password_hash_is_salted_scrypt_with_its_parameters() -> None:
    first, second = hash_password("Loa Đại Từ 2023"), hash_password("Loa Đại Từ 2023")
    assert first != second  # salted
    scheme, n, r, p, _salt, _digest = first.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**15, 8, 1)
    assert verify_password("Loa Đại Từ 2023", first)
    assert not verify_password("Loa Dai Tu 2023", first)
    assert not verify_password("", first)
    assert not verify_password("anything", None)
    assert not verify_password("anything", "not a hash")
    assert not verify_password("anything", "bcrypt$1$2$3$YQ==$YQ==")


def test_token_hash_is_sha256_hex() -> None:
    assert token_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_principal_paths() -> None:
    everywhere = Principal(1, "admin", Role.ADMIN, None, None)
    commune = Principal(2, "op", Role.OPERATOR, 7, "/1/7/")
    assert everywhere.can_access_path("/1/70/")
    assert commune.can_access_path("/1/7/") and commune.can_access_path("/1/7/42/")
    assert not commune.can_access_path("/1/70/") and not commune.can_access_path("/1/")
