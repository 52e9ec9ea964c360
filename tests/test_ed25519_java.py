"""The plain-Java Ed25519 verifier against OpenSSL's (through `cryptography`).

Android before API 33 has no Ed25519 in java.security, so the JVM applier
ships its own verifier (PureEd25519Verifier). It must accept exactly what
OpenSSL accepts: checked here on the RFC 8032 test vectors and on 10,000+
cases built to reach every branch: valid signatures, one flipped bit,
S >= L, random (mostly malformed) keys, the small-order keys with small-order
R, keys with a small-order component signed for real, non-canonical R and
key encodings. The applier's own key check (PatchKey, which refuses the
weak and non-canonical keys before any verification) is tested in
test_android.py.
"""

import collections
import hashlib
import os
import random
import subprocess

import pytest

import hostile
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "Ed25519Cases.java")
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


def _openssl(key, message, signature):
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def _cases(n_random):
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
                          "small_order_key", "mixed_order_key", "noncanonical", "edge_s"])
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


def test_pure_java_ed25519_agrees_with_openssl(jar):
    cases = _cases(int(os.environ.get("DPU_ED25519_CASES", "10000")))
    lines = "".join(f"{k.hex()} {m.hex()} {s.hex()}\n" for _, k, m, s in cases)
    proc = subprocess.run(["java", "-cp", jar, HARNESS], input=lines, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.split()
    assert len(got) == len(cases) + 1 and got[-1] == "JdkEd25519Verifier"
    tally = collections.Counter()
    for (kind, key, msg, sig), answer in zip(cases, got):
        expected = _openssl(key, msg, sig)
        assert (answer == "1") == expected, (kind, key.hex(), msg.hex(), sig.hex())
        tally[kind, expected] += 1
    # Every category ran, and the ones that can go both ways did.
    assert tally["rfc8032", True] == 4
    for kind in ("valid", "small_order_key", "mixed_order_key"):
        assert tally[kind, True] > 0, tally
    for kind in ("flipped", "s_above_l", "random_key", "small_order_key", "mixed_order_key",
                 "noncanonical", "edge_s"):
        assert tally[kind, False] > 0, tally
    assert tally["s_above_l", True] == 0


def test_without_platform_ed25519_the_jar_verifies_with_its_own(exported_run, jar, tmp_path):
    """A JVM whose providers lack Ed25519 (SunEC removed) still checks signatures."""
    from tflite_edge import signing  # pylint: disable=import-outside-toplevel
    from tflite_edge.create import create_patch  # pylint: disable=import-outside-toplevel
    result, _ = exported_run
    base = open(os.path.join(result.out_dir, "round_000", "model.tflite"), "rb").read()
    target = open(os.path.join(result.out_dir, "round_001", "model.tflite"), "rb").read()
    signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
    signer = signing.load_signer(str(tmp_path / "k.pem"))
    patch = create_patch(base, target, 1, signer)
    (tmp_path / "good.patch").write_bytes(patch)
    forged = bytearray(patch)
    forged[200] ^= 1   # inside the signature; the checksum redone so only it can refuse
    forged[-32:] = hashlib.sha256(bytes(forged[:-32])).digest()
    (tmp_path / "bad.patch").write_bytes(bytes(forged))
    (tmp_path / "no_ec.security").write_text("security.provider.3=SunRsaSign\n")
    harness = subprocess.run(["java", f"-Djava.security.properties={tmp_path}/no_ec.security",
                              "-cp", jar, HARNESS], input="", capture_output=True, text=True)
    assert harness.stdout.split() == ["PureEd25519Verifier"], harness.stderr
    for name, code in (("bad", 2), ("good", 0)):
        (tmp_path / "m.tflite").write_bytes(base)
        proc = subprocess.run(["java", f"-Djava.security.properties={tmp_path}/no_ec.security",
                               "-jar", jar, "apply", f"--base={tmp_path}/m.tflite",
                               f"--patch={tmp_path}/{name}.patch", "--no_state",
                               f"--public_key={tmp_path}/k.pub"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr
        assert code == 0 or "signature is not valid" in proc.stderr, proc.stderr
        assert (tmp_path / "m.tflite").read_bytes() == (target if code == 0 else base)
