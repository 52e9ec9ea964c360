"""Ed25519 verification cases for every verifier the appliers ship, judged by OpenSSL.

`cases(n)` builds the RFC 8032 vectors and n cases built to reach every
branch of a verifier: valid signatures, one flipped bit, S >= L, random
(mostly malformed) keys, the small-order keys with small-order R, keys with a
small-order component signed for real, non-canonical R and key encodings.
`openssl(...)` is the reference answer (through `cryptography`), and
`check(cases, answers)` compares and tallies.
"""

import collections
import hashlib
import random

import hostile
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P

# RFC 8032, 7.1: tests 1, 2, 3 and "SHA(abc)" (public key, message, signature).
RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39"
     "701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f36"
     "13d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f7"
     "60984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    ("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c"
     "23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7"
     "c66431e0303dca179c138ac17ad9bef1177331a704"),
]


def _add(p1, p2):
    """Points in extended coordinates (X, Y, Z, T), as RFC 8032, 5.1.4 adds them."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = 2 * D * t1 * t2 % P, 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _multiply(k, point):
    out = (0, 1, 1, 0)
    while k:
        if k & 1:
            out = _add(out, point)
        point, k = _add(point, point), k >> 1
    return out


def _encode(point):
    x, y, z, _ = point
    inverse = pow(z, P - 2, P)
    x, y = x * inverse % P, y * inverse % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(raw):
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x & 1 != raw[31] >> 7:
        x = (P - x) % P
    return x, y, 1, x * y % P


BASE = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
SMALL = [_decode(k) for k in hostile.small_order_keys()[:5]]   # canonical, one per y


def openssl(key, message, signature):
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def cases(n_random):
    """(category, key, message, signature) tuples."""
    rng = random.Random(8032)
    out = [("rfc8032", bytes.fromhex(k), bytes.fromhex(m), bytes.fromhex(s))
           for k, m, s in RFC8032]

    def message():
        return rng.randbytes(rng.randrange(0, 100))

    def keypair():
        private = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        return private, private.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)

    def h(r, key, msg):
        return int.from_bytes(hashlib.sha512(r + key + msg).digest(), "little") % L

    for _ in range(n_random):
        kind = rng.choice(["valid"] * 4 + ["flipped"] * 2 + ["s_above_l", "random_key",
                          "small_order_key", "mixed_order_key", "torsion_r", "noncanonical", "edge_s"])
        msg = message()
        if kind in ("valid", "flipped", "s_above_l", "edge_s"):
            private, key = keypair()
            sig = private.sign(msg)
            if kind == "flipped":
                which = rng.randrange(3)
                bit = 1 << rng.randrange(8)
                if which == 0:
                    sig = bytearray(sig)
                    sig[rng.randrange(64)] ^= bit
                    sig = bytes(sig)
                elif which == 1 and msg:
                    msg = bytearray(msg)
                    msg[rng.randrange(len(msg))] ^= bit
                    msg = bytes(msg)
                else:
                    key = bytearray(key)
                    key[rng.randrange(32)] ^= bit
                    key = bytes(key)
            elif kind == "s_above_l":
                s = int.from_bytes(sig[32:], "little")
                s = s + L if rng.random() < 0.7 else rng.randrange(L, 2 ** 256)
                if s >= 2 ** 256:
                    s = L
                sig = sig[:32] + s.to_bytes(32, "little")
            elif kind == "edge_s":
                s = rng.choice([0, 1, L - 1, L, L + 1, 2 ** 253 - 1])
                sig = sig[:32] + s.to_bytes(32, "little")
        elif kind == "random_key":
            key, sig = rng.randbytes(32), rng.randbytes(32) + rng.randbytes(31) + b"\x00"
        elif kind == "small_order_key":
            key = rng.choice(hostile.small_order_keys())
            r = _encode(rng.choice(SMALL + [(0, 1, 1, 0)]))
            sig = r + rng.choice([0, 0, 1, rng.randrange(8)]).to_bytes(32, "little")
        elif kind == "mixed_order_key":
            a, nonce = rng.randrange(1, L), rng.randrange(1, L)
            key = _encode(_add(_multiply(a, BASE), rng.choice(SMALL)))
            r = _encode(_multiply(nonce, BASE))
            sig = r + ((nonce + h(r, key, msg) * a) % L).to_bytes(32, "little")
        elif kind == "torsion_r":
            # The key holder adds a small-order point to R: a cofactorless
            # check (OpenSSL's) refuses it, a cofactored one accepts it.
            a, nonce = rng.randrange(1, L), rng.randrange(1, L)
            key = _encode(_multiply(a, BASE))
            r = _encode(_add(_multiply(nonce, BASE), rng.choice(SMALL[:1] + SMALL[2:])))
            sig = r + ((nonce + h(r, key, msg) * a) % L).to_bytes(32, "little")
        else:   # non-canonical encodings of R or of the key (y >= p)
            private, key = keypair()
            sig = private.sign(msg)
            y = rng.randrange(P, 2 ** 255)
            if rng.random() < 0.5:
                sig = (y | (rng.randrange(2) << 255)).to_bytes(32, "little") + sig[32:]
            else:
                key = (y | (rng.randrange(2) << 255)).to_bytes(32, "little")
                sig = _encode((0, 1, 1, 0)) + bytes(32)   # identity R, S = 0
        out.append((kind, key, msg, sig))
    return out




def torsion_free(point) -> bool:
    """Whether [L] point is the identity (no small-order component)."""
    x, y, z, _ = _multiply(L, point)
    return x % P == 0 and (y - z) % P == 0


def cofactored_difference(kind, key, sig) -> bool:
    """Whether a cofactored verifier (8([S]B - [h]A - R) = 0, which RFC 8032
    permits) may rightly differ from OpenSSL's cofactorless one here: only when
    the appliers' key check refuses the key, or the key or R has a small-order
    component, which no honest key generator or signer makes."""
    from tflite_edge import signing  # pylint: disable=import-outside-toplevel
    from tflite_edge.errors import PatchError  # pylint: disable=import-outside-toplevel
    if kind == "torsion_r":
        return True
    try:
        signing.check_public_key(key)
    except PatchError:
        return True   # malformed or of small order: every applier refuses the key first
    point = _decode(key)
    on_curve = (point[1] * point[1] - point[0] * point[0] - 1
                - D * point[0] * point[0] * point[1] * point[1]) % P == 0
    return on_curve and not torsion_free(point)


def check(built, answers, cofactored=False):
    """Asserts each answer ("1" accepted, "0" refused) is OpenSSL's; the tally by kind.

    With `cofactored`, an answer may differ where `cofactored_difference` says
    a cofactored verifier may; such differences are tallied as (kind, "cofactored").
    """
    assert len(answers) == len(built)
    tally = collections.Counter()
    for (kind, key, msg, sig), answer in zip(built, answers):
        expected = openssl(key, msg, sig)
        if (answer == "1") != expected and cofactored and cofactored_difference(kind, key, sig):
            tally[kind, "cofactored"] += 1
            continue
        assert (answer == "1") == expected, (kind, key.hex(), msg.hex(), sig.hex())
        tally[kind, expected] += 1
    # Every category ran, and the ones that can go both ways did.
    assert tally["rfc8032", True] == 4
    for kind in ("valid", "small_order_key", "mixed_order_key"):
        assert tally[kind, True] + tally[kind, "cofactored"] > 0, tally
    for kind in ("flipped", "s_above_l", "random_key", "small_order_key", "mixed_order_key",
                 "torsion_r", "noncanonical", "edge_s"):
        assert tally[kind, False] + tally[kind, "cofactored"] > 0, tally
    assert tally["s_above_l", True] == tally["torsion_r", True] == 0
    assert tally["valid", "cofactored"] == tally["flipped", "cofactored"] == 0
    return tally
