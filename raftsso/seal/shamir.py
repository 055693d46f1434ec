"""Shamir's secret sharing over GF(2^8), byte by byte (the math only; no files, no I/O).

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1``; share *x* (1..255) holds every polynomial's value at *x*. Any
``threshold`` shares determine the polynomials (Lagrange interpolation at 0); fewer are
consistent with every possible secret, so they reveal nothing about it.

The field is GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B).
Multiplication is shift-and-add without lookup tables: Python gives no constant-time
guarantee anyway, but at least no table is indexed by a secret byte.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

MAX_SHARES = 255


def gf_mul(a: int, b: int) -> int:
    """Product in GF(2^8) modulo 0x11B."""
    product = 0
    for _ in range(8):
        product ^= -(b & 1) & a
        a = ((a << 1) ^ (-(a >> 7) & 0x1B)) & 0xFF
        b >>= 1
    return product & 0xFF


def gf_inv(a: int) -> int:
    """Multiplicative inverse: a^254 (a^255 = 1 for every a != 0)."""
    if not 0 < a < 256:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    result, base, exp = 1, a, 254
    while exp:
        if exp & 1:
            result = gf_mul(result, base)
        base = gf_mul(base, base)
        exp >>= 1
    return result


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule; ``coefficients[0]`` is the constant term."""
    y = 0
    for c in reversed(coefficients):
        y = gf_mul(y, x) ^ c
    return y


def split(secret: bytes, shares: int, threshold: int, *,
          random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> list[tuple[int, bytes]]:
    """``shares`` points ``(x, y)`` (x = 1..shares), any ``threshold`` of which give ``secret``.

    ``random_bytes`` exists for known-answer tests; never pass it otherwise.
    """
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise ValueError(f"need 1 <= threshold <= shares <= {MAX_SHARES} "
                         f"(got threshold {threshold}, shares {shares})")
    if not secret:
        raise ValueError("nothing to split")
    polynomials = [[byte, *random_bytes(threshold - 1)] for byte in secret]
    return [(x, bytes(_evaluate(p, x) for p in polynomials)) for x in range(1, shares + 1)]


def interpolate(points: Sequence[tuple[int, bytes]], x: int) -> bytes:
    """The value at ``x`` of the polynomials through ``points`` (distinct x, equal lengths)."""
    xs = [p[0] for p in points]
    if not points or len(set(xs)) != len(xs) or any(not 0 <= xi < 256 for xi in xs):
        raise ValueError("points need distinct x coordinates from 0 to 255")
    size = len(points[0][1])
    if any(len(y) != size for _, y in points):
        raise ValueError("every share must have the same length")
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != i:
                numerator = gf_mul(numerator, x ^ xm)
                denominator = gf_mul(denominator, xi ^ xm)
        weights.append(gf_mul(numerator, gf_inv(denominator)))
    out = bytearray(size)
    for weight, (_, y) in zip(weights, points, strict=True):
        for j in range(size):
            out[j] ^= gf_mul(weight, y[j])
    return bytes(out)


def combine(points: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret (the value at 0) from ``threshold`` or more shares; shares have x != 0."""
    if any(x == 0 for x, _ in points):
        raise ValueError("a share never has x = 0 (that would be the secret itself)")
    return interpolate(points, 0)
