# ECDSA P-256 with SHA-256 (FIPS 186-4), verification only, in MicroPython: the alternative to
# the firmware's Ed25519 (firmware/loa/signature.py) measured by bench/signature_verify.py.
# Not part of the firmware. Same contract: verify(public_key, message, signature) -> bool, with
# the key uncompressed (65 bytes, 0x04 || X || Y) and the signature r || s (64 bytes, as
# `cryptography`'s decode_dss_signature gives them, big-endian). SHA-256 is hashlib's (native
# in MicroPython); the curve works on big ints, Jacobian coordinates (a = -3), the two scalars
# by their width-5 NAFs at once, the tables in affine form so that additions are mixed.

import hashlib
from array import array

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def _naf(k):
    """Width-5 NAF of 0 <= k < 2**256, 257 digits, least significant first."""
    digits = array("b", bytes(257))
    i = 0
    while k:
        if k & 1:
            d = k & 31
            if d > 16:
                d -= 32
            k -= d
            digits[i] = d
        k >>= 1
        i += 1
    return digits


def _double(X, Y, Z):
    # dbl-2001-b (a = -3)
    p = _P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = ((Y + Z) * (Y + Z) - gamma - delta) % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add_affine(X1, Y1, Z1, x2, y2):
    # madd-2007-bl, with the exceptional cases (infinity, equal points, opposite points)
    p = _P
    if Z1 == 0:
        return x2, y2, 1
    z1z1 = Z1 * Z1 % p
    u2 = x2 * z1z1 % p
    s2 = y2 * Z1 * z1z1 % p
    h = u2 - X1
    r = 2 * (s2 - Y1)
    if h % p == 0:
        if r % p == 0:
            return _double(x2, y2, 1)
        return 1, 1, 0
    hh = h * h % p
    i = 4 * hh
    j = h * i % p
    v = X1 * i % p
    X3 = (r * r - j - 2 * v) % p
    Y3 = (r * (v - X3) - 2 * Y1 * j) % p
    Z3 = ((Z1 + h) * (Z1 + h) - z1z1 - hh) % p
    return X3, Y3, Z3


def _odd_multiples(x, y):
    """P, 3P, ..., 15P in affine form (one inversion for all, Montgomery's trick)."""
    X2, Y2, Z2 = _double(x, y, 1)
    z2 = pow(Z2, _P - 2, _P)
    zz = z2 * z2 % _P
    dx, dy = X2 * zz % _P, Y2 * zz * z2 % _P
    points = [(x, y, 1)]
    for _ in range(7):
        X, Y, Z = points[-1]
        points.append(_add_affine(X, Y, Z, dx, dy))
    # Batch inversion of the Z's (none is 0 for a point of prime order).
    prefix = [1]
    for X, Y, Z in points:
        prefix.append(prefix[-1] * Z % _P)
    inv = pow(prefix[-1], _P - 2, _P)
    table = [None] * 8
    for i in range(7, -1, -1):
        X, Y, Z = points[i]
        zi = inv * prefix[i] % _P
        inv = inv * Z % _P
        zz = zi * zi % _P
        table[i] = (X * zz % _P, Y * zz * zi % _P)
    return table


_G_TABLE = _odd_multiples(_GX, _GY)


def _check(key, message, signature):
    if len(key) != 65 or key[0] != 4 or len(signature) != 64:
        return False
    qx = int.from_bytes(key[1:33], "big")
    qy = int.from_bytes(key[33:], "big")
    if qx >= _P or qy >= _P or (qy * qy - qx * qx * qx + 3 * qx - _B) % _P:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, _N - 2, _N)
    u1 = e * w % _N
    u2 = r * w % _N
    qt = _odd_multiples(qx, qy)
    gt = _G_TABLE
    n1 = _naf(u1)
    n2 = _naf(u2)
    X, Y, Z = 1, 1, 0
    for i in range(256, -1, -1):
        if Z:
            X, Y, Z = _double(X, Y, Z)
        d = n1[i]
        if d > 0:
            X, Y, Z = _add_affine(X, Y, Z, *gt[d >> 1])
        elif d < 0:
            x, y = gt[-d >> 1]
            X, Y, Z = _add_affine(X, Y, Z, x, _P - y)
        d = n2[i]
        if d > 0:
            X, Y, Z = _add_affine(X, Y, Z, *qt[d >> 1])
        elif d < 0:
            x, y = qt[-d >> 1]
            X, Y, Z = _add_affine(X, Y, Z, x, _P - y)
    if Z == 0:
        return False
    # x(R) mod n == r, without inverting Z: X == c * Z^2 for c = r or r + n (if below p).
    zz = Z * Z % _P
    if r * zz % _P == X:
        return True
    return r + _N < _P and (r + _N) * zz % _P == X


def verify(public_key, message, signature):
    for value in (public_key, message, signature):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return False
    try:
        return _check(bytes(public_key), message, bytes(signature))
    except Exception:
        return False
