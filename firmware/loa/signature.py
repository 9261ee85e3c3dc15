# Ed25519 signature verification (RFC 8032, section 5.1.7) for the firmware release manifest:
# a receiver checks the manifest's signature with the public key built into its firmware
# before it downloads anything the manifest names.
#
# Verification only, of public data: nothing here needs to run in constant time. Hostile
# input (wrong lengths, S >= L, a key that does not decode to a point, a non-canonical R,
# values that are not bytes) is refused with False, never an exception. A heap too small for
# the check raises MemoryError: no answer, rather than a refusal the caller could not tell
# from a bad signature.
#
# MicroPython's hashlib has no SHA-512 (only SHA-1 and SHA-256 on the unix port and the
# ESP32), so SHA-512 is written here. Its 64-bit words are held as four 16-bit limbs, so
# that every intermediate value stays below 2**30: a small int on a 32-bit port (31-bit
# small ints), where 32- or 64-bit words would allocate a big int for each operation. The
# curve arithmetic works on big ints (256-bit) whatever the port.
#
# Loaded for a check and let go after it: the tables below live only while the module does.

import struct
from array import array
from binascii import unhexlify

from micropython import const

# --- SHA-512 (FIPS 180-4) on 16-bit limbs -----------------------------------------------------

_M16 = const(0xFFFF)


def _limbs(raw):
    """The 16-bit limbs of the big-endian bytes ``raw`` as an array, read one by one into it
    (not through a tuple of them all: 2.5 KiB in one block for the 320 of _K on a 64-bit port)."""
    out = array("H", raw)
    for i in range(len(out)):
        out[i] = raw[2 * i] << 8 | raw[2 * i + 1]
    return out


# The 80 round constants and the initial hash value, as 16-bit limbs, most significant first.
_K = _limbs(unhexlify(
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc3956c25bf348b538"
    "59f111f1b605d019923f82a4af194f9bab1c5ed5da6d8118d807aa98a303024212835b0145706fbe"
    "243185be4ee4b28c550c7dc3d5ffb4e272be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235"
    "c19bf174cf692694e49b69c19ef14ad2efbe4786384f25e30fc19dc68b8cd5b5240ca1cc77ac9c65"
    "2de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5983e5152ee66dfab"
    "a831c66d2db43210b00327c898fb213fbf597fc7beef0ee4c6e00bf33da88fc2d5a79147930aa725"
    "06ca6351e003826f142929670a0e6e7027b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed"
    "53380d139d95b3df650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353b"
    "a2bfe8a14cf10364a81a664bbc423001c24b8b70d0f89791c76c51a30654be30d192e819d6ef5218"
    "d69906245565a910f40e35855771202a106aa07032bbd1b819a4c116b8d2d0c81e376c085141ab53"
    "2748774cdf8eeb9934b0bcb5e19b48a8391c0cb3c5c95a634ed8aa4ae3418acb5b9cca4f7763e373"
    "682e6ff3d6b2b8a3748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532bca273eceea26619c"
    "d186b8c721c0c207eada7dd6cde0eb1ef57d4f7fee6ed17806f067aa72176fba0a637dc5a2c898a6"
    "113f9804bef90dae1b710b35131c471b28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc"
    "431d67c49c100d4c4cc5d4becb3e42b6597f299cfc657e2a5fcb6fab3ad6faec6c44198c4a475817"))
_H0 = struct.unpack(">32H", unhexlify(
    "6a09e667f3bcc908bb67ae8584caa73b3c6ef372fe94f82ba54ff53a5f1d36f1"
    "510e527fade682d19b05688c2b3e6c1f1f83d9abfb41bd6b5be0cd19137e2179"))


class Sha512:
    """SHA-512 of the bytes given to ``update``, as ``digest()`` (64 bytes)."""

    def __init__(self):
        self._h = list(_H0)
        self._w = array("H", bytes(640))  # the message schedule: 80 words of 4 limbs
        self._buf = bytearray(128)
        self._fill = 0
        self._length = 0

    def update(self, data):
        data = memoryview(data)
        n = len(data)
        self._length += n
        pos = 0
        fill = self._fill
        if fill:
            take = min(128 - fill, n)
            self._buf[fill:fill + take] = data[:take]
            fill += take
            pos = take
            if fill < 128:
                self._fill = fill
                return
            self._block(self._buf, 0)
        while n - pos >= 128:
            self._block(data, pos)
            pos += 128
        self._fill = n - pos
        self._buf[:self._fill] = data[pos:]

    def digest(self):
        bits = self._length * 8
        fill = self._fill
        pad = bytearray((239 - fill) % 128 + 1 + 16)  # 0x80, zeros, 128-bit length
        pad[0] = 0x80
        pad[-8:] = bits.to_bytes(8, "big")
        self.update(pad)
        return struct.pack(">32H", *self._h)

    def _block(self, data, offset):
        w = self._w
        w[0:64] = array("H", struct.unpack_from(">64H", data, offset))
        # The schedule: W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16].
        for t in range(64, 320, 4):
            p0 = w[t - 60]
            p1 = w[t - 59]
            p2 = w[t - 58]
            p3 = w[t - 57]
            q0 = w[t - 8]
            q1 = w[t - 7]
            q2 = w[t - 6]
            q3 = w[t - 5]
            x3 = (w[t - 61] + w[t - 25] + ((p3 >> 1 | (p2 & 0x1) << 15) ^ (p3 >> 8 | (p2 & 0xff) << 8)
                                           ^ (p3 >> 7 | (p2 & 0x7f) << 9))
                  + ((q2 >> 3 | (q1 & 0x7) << 13) ^ (q0 >> 13 | (q3 & 0x1fff) << 3) ^ (q3 >> 6 | (q2 & 0x3f) << 10)))
            x2 = (w[t - 62] + w[t - 26] + ((p2 >> 1 | (p1 & 0x1) << 15) ^ (p2 >> 8 | (p1 & 0xff) << 8)
                                           ^ (p2 >> 7 | (p1 & 0x7f) << 9))
                  + ((q1 >> 3 | (q0 & 0x7) << 13) ^ (q3 >> 13 | (q2 & 0x1fff) << 3) ^ (q2 >> 6 | (q1 & 0x3f) << 10))
                  + (x3 >> 16))
            x1 = (w[t - 63] + w[t - 27] + ((p1 >> 1 | (p0 & 0x1) << 15) ^ (p1 >> 8 | (p0 & 0xff) << 8)
                                           ^ (p1 >> 7 | (p0 & 0x7f) << 9))
                  + ((q0 >> 3 | (q3 & 0x7) << 13) ^ (q2 >> 13 | (q1 & 0x1fff) << 3) ^ (q1 >> 6 | (q0 & 0x3f) << 10))
                  + (x2 >> 16))
            x0 = (w[t - 64] + w[t - 28] + ((p0 >> 1 | (p3 & 0x1) << 15) ^ (p0 >> 8 | (p3 & 0xff) << 8) ^ (p0 >> 7))
                  + ((q3 >> 3 | (q2 & 0x7) << 13) ^ (q1 >> 13 | (q0 & 0x1fff) << 3) ^ (q0 >> 6))
                  + (x1 >> 16))
            w[t] = x0 & _M16
            w[t + 1] = x1 & _M16
            w[t + 2] = x2 & _M16
            w[t + 3] = x3 & _M16
        h = self._h
        a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3 = h[0:16]
        e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3 = h[16:32]
        k = _K
        for t in range(0, 320, 4):
            # T1 = h + S1(e) + Ch(e, f, g) + K[t] + W[t]; T2 = S0(a) + Maj(a, b, c), limb by
            # limb, the carries taken once below.
            y3 = (h3 + ((e3 >> 14 | (e2 & 0x3fff) << 2) ^ (e2 >> 2 | (e1 & 0x3) << 14) ^ (e1 >> 9 | (e0 & 0x1ff) << 7))
                  + (g3 ^ (e3 & (f3 ^ g3))) + k[t + 3] + w[t + 3])
            y2 = (h2 + ((e2 >> 14 | (e1 & 0x3fff) << 2) ^ (e1 >> 2 | (e0 & 0x3) << 14) ^ (e0 >> 9 | (e3 & 0x1ff) << 7))
                  + (g2 ^ (e2 & (f2 ^ g2))) + k[t + 2] + w[t + 2])
            y1 = (h1 + ((e1 >> 14 | (e0 & 0x3fff) << 2) ^ (e0 >> 2 | (e3 & 0x3) << 14) ^ (e3 >> 9 | (e2 & 0x1ff) << 7))
                  + (g1 ^ (e1 & (f1 ^ g1))) + k[t + 1] + w[t + 1])
            y0 = (h0 + ((e0 >> 14 | (e3 & 0x3fff) << 2) ^ (e3 >> 2 | (e2 & 0x3) << 14) ^ (e2 >> 9 | (e1 & 0x1ff) << 7))
                  + (g0 ^ (e0 & (f0 ^ g0))) + k[t] + w[t])
            z3 = (((a2 >> 12 | (a1 & 0xfff) << 4) ^ (a1 >> 2 | (a0 & 0x3) << 14) ^ (a1 >> 7 | (a0 & 0x7f) << 9))
                  + ((a3 & b3) | (c3 & (a3 | b3))))
            z2 = (((a1 >> 12 | (a0 & 0xfff) << 4) ^ (a0 >> 2 | (a3 & 0x3) << 14) ^ (a0 >> 7 | (a3 & 0x7f) << 9))
                  + ((a2 & b2) | (c2 & (a2 | b2))))
            z1 = (((a0 >> 12 | (a3 & 0xfff) << 4) ^ (a3 >> 2 | (a2 & 0x3) << 14) ^ (a3 >> 7 | (a2 & 0x7f) << 9))
                  + ((a1 & b1) | (c1 & (a1 | b1))))
            z0 = (((a3 >> 12 | (a2 & 0xfff) << 4) ^ (a2 >> 2 | (a1 & 0x3) << 14) ^ (a2 >> 7 | (a1 & 0x7f) << 9))
                  + ((a0 & b0) | (c0 & (a0 | b0))))
            h0 = g0
            h1 = g1
            h2 = g2
            h3 = g3
            g0 = f0
            g1 = f1
            g2 = f2
            g3 = f3
            f0 = e0
            f1 = e1
            f2 = e2
            f3 = e3
            x = d3 + y3  # e = d + T1
            e3 = x & _M16
            x = d2 + y2 + (x >> 16)
            e2 = x & _M16
            x = d1 + y1 + (x >> 16)
            e1 = x & _M16
            e0 = (d0 + y0 + (x >> 16)) & _M16
            d0 = c0
            d1 = c1
            d2 = c2
            d3 = c3
            c0 = b0
            c1 = b1
            c2 = b2
            c3 = b3
            b0 = a0
            b1 = a1
            b2 = a2
            b3 = a3
            x = y3 + z3  # a = T1 + T2
            a3 = x & _M16
            x = y2 + z2 + (x >> 16)
            a2 = x & _M16
            x = y1 + z1 + (x >> 16)
            a1 = x & _M16
            a0 = (y0 + z0 + (x >> 16)) & _M16
        for i, v in enumerate((a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
                               e0, e1, e2, e3, f0, f1, f2, f3, g0, g1, g2, g3, h0, h1, h2, h3)):
            h[i] += v
        for i in range(31, 0, -1):  # carries, word by word (limb 4i is a word's top)
            if i & 3:
                h[i - 1] += h[i] >> 16
            h[i] &= _M16
        h[0] &= _M16


# --- Edwards25519 -----------------------------------------------------------------------------

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493  # the group order
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 2 * _D % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
# The base point B.
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
# The scalars are taken in width-5 NAF (digits 0 or odd in -15..15, a non-zero one every
# 6 bits on average), so odd multiples up to 15P of each point are tabled: 8 points.
_NAF_MASK = const(31)
_NAF_HALF = const(16)
_DIGITS = const(254)  # a width-w NAF has at most one digit more than the binary form


def _decode(data):
    """The point (x, y) that 32 bytes encode (RFC 8032, section 5.1.3), or None if they encode
    none or do so non-canonically (y >= p; x = 0 with the sign bit set)."""
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx != u:
        if vxx != _P - u:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _naf(k):
    """The width-5 non-adjacent form of 0 <= ``k`` < 2**253: _DIGITS digits, each 0 or odd in
    -15..15, least significant first."""
    digits = array("b", bytes(_DIGITS))
    i = 0
    while k:
        if k & 1:
            d = k & _NAF_MASK
            if d > _NAF_HALF:
                d -= _NAF_MASK + 1
            k -= d
            digits[i] = d
        k >>= 1
        i += 1
    return digits


def _odd_multiples(x, y):
    """P, 3P, ..., 15P of the point P = (x, y), each in the form additions use: (Y - X, Y + X,
    2dT, 2Z)."""
    X, Y, Z, T = x, y, 1, x * y % _P
    # 2P (doubling, RFC 8032 section 5.1.4)
    a = X * X % _P
    b = Y * Y % _P
    c = 2 * Z * Z % _P
    hh = a + b
    e = hh - (X + Y) * (X + Y) % _P
    g = a - b
    f = c + g
    dYmX, dYpX, dT2d, dZ2 = ((g * hh - e * f) % _P, (g * hh + e * f) % _P, _D2 * (e * hh % _P) % _P,
                             2 * (f * g) % _P)
    table = [(Y - X, Y + X, _D2 * T % _P, 2 * Z)]
    for _ in range(7):
        X, Y, Z, T = _add(X, Y, Z, T, dYmX, dYpX, dT2d, dZ2)
        table.append(((Y - X) % _P, (Y + X) % _P, _D2 * T % _P, 2 * Z % _P))
    return table


def _add(X, Y, Z, T, ymx, ypx, t2d, z2):
    """(X, Y, Z, T) + a tabled point (RFC 8032 section 5.1.4, the second operand's products with
    constants done once)."""
    p = _P
    a = (Y - X) * ymx % p
    b = (Y + X) * ypx % p
    c = T * t2d % p
    d = Z * z2 % p
    e = b - a
    f = d - c
    g = d + c
    hh = b + a
    return e * f % p, g * hh % p, f * g % p, e * hh % p


# B's table, made once when the module is loaded.
_BASE = _odd_multiples(_BX, _BY)


def _check(key, message, signature):
    if len(key) != 32 or len(signature) != 64:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    point = _decode(key)
    if point is None:
        return False
    digest = Sha512()
    digest.update(signature[:32])
    digest.update(key)
    digest.update(message)
    k = int.from_bytes(digest.digest(), "little") % _L
    # R' = [s]B - [k]A, by both NAFs at once; the signature is valid if R' encodes to R.
    base = _BASE
    ax, ay = point
    minus_a = _odd_multiples(_P - ax if ax else 0, ay)
    ns = _naf(s)
    nk = _naf(k)
    top = _DIGITS - 1
    while top >= 0 and not (ns[top] or nk[top]):
        top -= 1
    p = _P
    X, Y, Z, T = 0, 1, 1, 0
    for i in range(top, -1, -1):
        ds = ns[i]
        dk = nk[i]
        # Doubling (RFC 8032 section 5.1.4); T only when an addition follows.
        a = X * X % p
        b = Y * Y % p
        c = 2 * Z * Z % p
        hh = a + b
        e = hh - (X + Y) * (X + Y) % p
        g = a - b
        f = c + g
        X = e * f % p
        Y = g * hh % p
        Z = f * g % p
        if ds or dk:
            T = e * hh % p
            if ds > 0:
                X, Y, Z, T = _add(X, Y, Z, T, *base[ds >> 1])
            elif ds < 0:
                ymx, ypx, t2d, z2 = base[-ds >> 1]
                X, Y, Z, T = _add(X, Y, Z, T, ypx, ymx, -t2d, z2)
            if dk > 0:
                X, Y, Z, T = _add(X, Y, Z, T, *minus_a[dk >> 1])
            elif dk < 0:
                ymx, ypx, t2d, z2 = minus_a[-dk >> 1]
                X, Y, Z, T = _add(X, Y, Z, T, ypx, ymx, -t2d, z2)
    zi = pow(Z, _P - 2, _P)
    x = X * zi % _P
    y = Y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little") == bytes(signature[:32])


def verify(public_key, message, signature):
    """True if ``signature`` (64 bytes) is ``public_key``'s (32 bytes) Ed25519 signature of
    ``message`` (the exact bytes signed). Any other input, however malformed, gives False;
    MemoryError is raised if the heap is too small for the check."""
    for value in (public_key, message, signature):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return False
    try:
        return _check(bytes(public_key), message, bytes(signature))
    except MemoryError:
        raise  # no answer: the caller may try again with more heap
    except Exception:  # noqa: BLE001 - a refusal, never a crash, whatever the input
        return False
