"""Hostile patches and keys, refused by name: each check, removed, fails a test here.

The crafted patches (tests/hostile.py) carry correct checksums and, where the
case needs one, valid signatures; where it matters, their declared result is
what a careless applier would write. So each must be refused by the check
written for it, with its message, never by a later one.
"""

import os
import re
import subprocess
import time
import tracemalloc

import pytest

import hostile
from tflite_edge import patch_format, signing
from tflite_edge.apply import apply_patch, apply_patch_file
from tflite_edge.errors import PatchError

CASES = hostile.cases()


@pytest.fixture()
def device(tmp_path):
    """A device folder: the tiny model, and the test key's public half."""
    (tmp_path / "model.tflite").write_bytes(hostile.tiny_model())
    _, public = hostile.test_key()
    (tmp_path / "key.pub").write_bytes(public)
    return tmp_path


def _untouched(folder):
    assert (folder / "model.tflite").read_bytes() == hostile.tiny_model()
    assert not (folder / "out.tflite").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_python_refuses_each_hostile_patch_with_its_own_check(case, device):
    (device / "p").write_bytes(case.patch)
    key = signing.load_public_key(str(device / "key.pub")) if case.signed else None
    with pytest.raises(PatchError, match=re.escape(case.python)):
        apply_patch_file(str(device / "model.tflite"), str(device / "p"),
                         str(device / "out.tflite"), key, allow_unsigned=key is None)
    _untouched(device)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_c_refuses_each_hostile_patch_with_its_own_check(case, device, c_signed_applier):
    (device / "p").write_bytes(case.patch)
    key = ["--public_key", str(device / "key.pub")] if case.signed else ["--allow_unsigned"]
    proc = subprocess.run([c_signed_applier, *key, str(device / "model.tflite"),
                           str(device / "p"), str(device / "out.tflite")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and case.c in proc.stderr, proc.stderr
    _untouched(device)
    # Nothing created beside the model: no output, no temporary file.
    assert sorted(os.listdir(device)) == ["key.pub", "model.tflite", "p"]


def test_hostile_sizes_cost_milliseconds_and_kilobytes(device):
    """Declared sizes never drive time or memory: they are bounded before use."""
    key = signing.load_public_key(str(device / "key.pub"))
    model = str(device / "model.tflite")
    big = [c for c in CASES if "positions declared" in c.name or "unary" in c.name]
    assert len(big) == 3
    for case in big:
        (device / "p").write_bytes(case.patch)
        first = case.python if "unary" in case.name else "not signed"
        for public_key, message in ((key, first), (None, case.python)):
            tracemalloc.start()
            started = time.perf_counter()
            with pytest.raises(PatchError, match=re.escape(message)):
                apply_patch_file(model, str(device / "p"), str(device / "out.tflite"),
                                 public_key, allow_unsigned=public_key is None)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            # The patch itself is read whole (2 MiB for the unary run): beyond
            # that, a small constant. The old applier took 1.09 GB and 2.6 s
            # for 2^27, ran out of memory for 2^32 - 1 and took 108 s on the run.
            assert peak < 3 * len(case.patch) + (8 << 20), (case.name, peak)
            assert seconds < 5, (case.name, seconds)


def test_a_long_unary_run_in_memory_is_refused_at_the_run():
    """`apply_patch` on bytes has no file size to bound: the decoder stops at the run."""
    case = next(c for c in CASES if "unary" in c.name)
    started = time.perf_counter()
    with pytest.raises(PatchError, match="out of range"):
        apply_patch(hostile.tiny_model(), case.patch, allow_unsigned=True)
    assert time.perf_counter() - started < 5


def test_inspecting_a_long_unary_run_is_linear():
    """Without a base, Rice limits come from the patch: the decoder must still be linear."""
    case = next(c for c in CASES if "unary" in c.name)
    body = bytearray(case.patch[patch_format.HEADER.size:-32])
    body[20:24] = (2 ** 32 - 1).to_bytes(4, "little")   # a buffer of 2^32 - 1 elements
    patch = hostile.seal(hostile.tiny_model(), bytes(body), 1)
    started = time.perf_counter()
    with pytest.raises(PatchError, match="runs past the end"):
        patch_format.decode(patch)
    assert time.perf_counter() - started < 10   # 108 s when it was quadratic


def _c_check_key(applier, path):
    return subprocess.run([applier, "--check_key", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("raw", hostile.small_order_keys() + hostile.malformed_keys(),
                         ids=lambda k: k.hex()[:8] + ".." + k.hex()[-2:])
def test_weak_and_malformed_keys_are_refused_at_load(raw, tmp_path, c_signed_applier):
    (tmp_path / "k.pub").write_bytes(raw)
    with pytest.raises(PatchError, match="small order|not a valid Ed25519 point"):
        signing.load_public_key(str(tmp_path / "k.pub"))
    proc = _c_check_key(c_signed_applier, tmp_path / "k.pub")
    assert proc.returncode == 2 and "malformed or of small order" in proc.stderr


def test_the_identity_key_would_accept_a_forgery_without_the_check(tmp_path):
    """Why keys are checked at load: the signature library alone accepts this."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    identity = bytes([1]) + bytes(31)
    forged = identity + bytes(32)             # R = identity, S = 0
    ed25519.Ed25519PublicKey.from_public_bytes(identity).verify(forged, b"any patch")
    (tmp_path / "k.pub").write_bytes(identity)
    with pytest.raises(PatchError, match="small order"):
        signing.load_public_key(str(tmp_path / "k.pub"))


def test_real_keys_pass_the_checks_and_wrong_lengths_do_not(tmp_path, c_signed_applier):
    for n in range(40):
        signing.generate_keypair(str(tmp_path / "k.pem"), str(tmp_path / "k.pub"))
        signing.load_public_key(str(tmp_path / "k.pub"))
        proc = _c_check_key(c_signed_applier, tmp_path / "k.pub")
        assert proc.returncode == 0, (n, proc.stderr)
    good = (tmp_path / "k.pub").read_bytes()
    for raw in (good + b"\0", good[:31]):
        (tmp_path / "bad.pub").write_bytes(raw)
        with pytest.raises(PatchError, match="32-byte"):
            signing.load_public_key(str(tmp_path / "bad.pub"))
        proc = _c_check_key(c_signed_applier, tmp_path / "bad.pub")
        assert proc.returncode == 2 and "32-byte" in proc.stderr


def test_whole_file_updates_follow_the_device_policy(device, c_signed_applier):
    """Unsigned: refused unless allowed; signed and verified: accepted by default."""
    base = hostile.tiny_model()
    new = base[:20] + b"\0\0\0\0" + base[24:]
    body = patch_format.WHOLE_FILE_RECORD.pack(3, len(new)) + new
    signed = hostile.seal(base, body, 1, new, signer=hostile.test_signer())
    (device / "p").write_bytes(signed)
    key = signing.load_public_key(str(device / "key.pub"))
    model, out = str(device / "model.tflite"), str(device / "out.tflite")
    apply_patch_file(model, str(device / "p"), out, key)
    assert (device / "out.tflite").read_bytes() == new
    with pytest.raises(PatchError, match="whole model"):
        apply_patch_file(model, str(device / "p"), out, key, whole_file="never")
    for args, code in ((["--public_key", str(device / "key.pub")], 0),
                       (["--public_key", str(device / "key.pub"), "--whole_file=never"], 2),
                       (["--allow_unsigned"], 2), (["--allow_unsigned", "--whole_file=always"], 0)):
        os.unlink(out) if os.path.exists(out) else None
        proc = subprocess.run([c_signed_applier, *args, model, str(device / "p"), out],
                              capture_output=True, text=True)
        assert proc.returncode == code, (args, proc.stderr)
        assert code or (device / "out.tflite").read_bytes() == new
