"""Ed25519 public keys: the check every applier runs before it trusts one.

A key that is not a canonical encoding of a curve point, or is one of the
eight points of small order, is refused: with the identity point as the key,
the signature (R = identity, S = 0) verifies for every message. Kept apart
from `signing` (which needs `cryptography` and writes key files) because
the patch decoder checks a rotation's next key with it.
"""

from tflite_edge.errors import PatchError

_P = 2 ** 255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_MINUS_ONE = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes):
    """The affine point (x, y) a 32-byte encoding names, or None if it names none.

    RFC 8032, section 5.1.3, with the canonical checks: y < p, and no
    "negative zero" x.
    """
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_MINUS_ONE % _P
    elif v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    return ((x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P,
            (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P)


def check_public_key(raw: bytes) -> None:
    """Refuses an Ed25519 public key that is malformed or of small order.

    Raises:
      PatchError: not 32 bytes, not a canonical encoding of a curve point, or
        a point whose order divides 8 (then forged signatures verify).
    """
    if len(raw) != 32:
        raise PatchError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    point = _decode_point(raw)
    if point is None:
        raise PatchError("the public key is not a valid Ed25519 point")
    multiple = point
    for _ in range(3):
        multiple = _add(multiple, multiple)
    if multiple == (0, 1):
        raise PatchError("the public key is a point of small order (a weak key that "
                         "accepts forged signatures)")
