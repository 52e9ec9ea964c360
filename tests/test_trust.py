"""Update trust, the same in the Python, C and JVM appliers.

Fail closed without a key; signatures that name their key; key rotation;
release times that never go back and expiry; rounds that cannot freeze a
device; strict numbers and flags; state files and symbolic links; patches
bounded before they are read; and the C library's single read of the header
it verifies. Each check here, broken on purpose, fails one of these tests.
"""

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc

import pytest

import hostile
from conftest import ROOT, run_jar
from test_device_state import _variant
from tflite_edge import patch_format, signing
from tflite_edge.apply import apply_patch, apply_patch_file
from tflite_edge.create import create_patch, create_rotation_patch
from tflite_edge.errors import PatchError
from tflite_edge.patch_format import ELEMENTS_RECORD, KIND_ELEMENTS
from tflite_edge.regions import writable_regions
from tflite_edge.source import Source

T0 = 1_790_000_000


def _py(*args):
    return subprocess.run([sys.executable, "-m", "tflite_edge.patch", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True)


def _c(binary, *args):
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True)


def _three(c_binary, jar, m, p, o, *flags):
    """One apply of `p` to `m` into `o` per applier (no device state), as callables.

    Callables, so that each runs after the caller looked at the one before.
    """
    return [lambda: _py("apply", f"--base={m}", f"--patch={p}", f"--out={o}", "--no_state",
                        *flags),
            lambda: _c(c_binary, *flags, m, p, o),
            lambda: run_jar(jar, "apply", f"--base={m}", f"--patch={p}", f"--out={o}",
                            "--no_state", *flags)]


@pytest.fixture()
def keys(tmp_path):
    """Two key pairs, A and B: (signer, public key path)."""
    out = {}
    for name in ("A", "B"):
        signing.generate_keypair(str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.pub"))
        out[name] = (signing.load_signer(str(tmp_path / f"{name}.pem")), tmp_path / f"{name}.pub")
    return out


@pytest.fixture()
def files():
    """Six rounds of the tiny model, each a few weights apart."""
    out = [hostile.tiny_model()]
    for r in range(1, 6):
        out.append(_variant(out[-1], r))
    return out


class Device:
    """One device per applier, each keeping its own state as firmware would.

    Python and the JVM keep the state file beside the model; for the C
    driver this class is the firmware: it passes the round, the last release
    time and the key, and keeps what the driver reports and writes.
    """

    def __init__(self, kind, folder, model, key, binary=None):
        self.kind, self.folder, self.binary = kind, folder, binary
        folder.mkdir()
        self.model = folder / "model.tflite"
        self.model.write_bytes(model)
        self.key = folder / "trusted.pub"
        self.key.write_bytes(key.read_bytes())
        self.round, self.release, self.first = 0, 0, True

    def apply(self, patch: bytes, *extra):
        (self.folder / "p").write_bytes(patch)
        p = self.folder / "p"
        if self.kind == "c":
            out = self.folder / "next.tflite"
            proc = _c(self.binary, "--public_key", self.key, "--round", self.round,
                      "--release_time", self.release, "--key_out", self.folder / "key.out",
                      *extra, self.model, p, out)
            if proc.returncode == 0:
                os.replace(out, self.model)
                found = re.search(r"round (\d+), release_time (\d+)", proc.stdout)
                self.round, self.release = int(found[1]), int(found[2])
                os.replace(self.folder / "key.out", self.key)
            return proc
        first = ["--initial_round=0", f"--public_key={self.key}"] if self.first else []
        args = ["apply", f"--base={self.model}", f"--patch={p}", *first, *extra]
        proc = _py(*args) if self.kind == "python" else run_jar(self.binary, *args)
        self.first = self.first and proc.returncode != 0
        return proc


def _devices(tmp_path, model, key, c_signed_applier, jar):
    return [Device("python", tmp_path / "py", model, key),
            Device("c", tmp_path / "c", model, key, c_signed_applier),
            Device("java", tmp_path / "java", model, key, jar)]


def test_a_five_round_chain_across_a_key_rotation(tmp_path, keys, files, c_signed_applier, jar):
    """Rounds 1-2 signed by A, a rotation record hands over to B, rounds 3-5 signed by B."""
    (a, a_pub), (b, b_pub) = keys["A"], keys["B"]
    patches = {r: create_patch(files[r - 1], files[r], r, a if r <= 2 else b,
                               release_time=T0 + r) for r in range(1, 6)}
    rotation = create_rotation_patch(Source.of(files[2]), 2, a, b.public_key, T0 + 2)
    late_a = create_patch(files[5], _variant(files[5], 9), 6, a, release_time=T0 + 6)
    for device in _devices(tmp_path, files[0], a_pub, c_signed_applier, jar):
        for step, patch in [(1, patches[1]), (2, patches[2]), ("rotation", rotation),
                            (3, patches[3]), (4, patches[4]), (5, patches[5])]:
            proc = device.apply(patch)
            assert proc.returncode == 0, (device.kind, step, proc.stderr)
            assert "verified" in proc.stdout, (device.kind, step)
        assert device.model.read_bytes() == files[5], device.kind
        # The retired key signs nothing any more, whoever holds its private half.
        refused = device.apply(late_a)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, device.kind
        assert re.search("retired key|does not trust", refused.stderr), refused.stderr
        assert device.model.read_bytes() == files[5]
        # A replay of the rotation is signed by the retired key too.
        assert device.apply(rotation).returncode == 2
    state = json.loads((tmp_path / "py" / "model.tflite.state").read_text())
    assert state["key"] == b.public_key.hex() and state["retired"] == [a.key_id.hex()]
    assert json.loads((tmp_path / "java" / "model.tflite.state").read_text()) == state
    assert (tmp_path / "c" / "trusted.pub").read_bytes() == b.public_key


def test_passing_the_retired_key_again_is_refused(tmp_path, keys, files):
    (a, a_pub), (b, _) = keys["A"], keys["B"]
    model, state = tmp_path / "m.tflite", str(tmp_path / "m.state")
    model.write_bytes(files[0])
    rotation = create_rotation_patch(Source.of(files[0]), 0, a, b.public_key, T0)
    (tmp_path / "rot").write_bytes(rotation)
    apply_patch_file(str(model), str(tmp_path / "rot"), state_path=state, initial_round=0,
                     public_key=signing.load_public_key(str(a_pub)))
    (tmp_path / "p").write_bytes(create_patch(files[0], files[1], 1, a, T0 + 1))
    with pytest.raises(PatchError, match="was retired by a key rotation"):
        apply_patch_file(str(model), str(tmp_path / "p"), state_path=state,
                         public_key=signing.load_public_key(str(a_pub)))
    # Nor can a device that holds a key fall back to no key.
    (tmp_path / "u").write_bytes(create_patch(files[0], files[1], 1, release_time=T0 + 1))
    with pytest.raises(PatchError, match="not signed"):
        apply_patch_file(str(model), str(tmp_path / "u"), state_path=state, allow_unsigned=True)
    assert model.read_bytes() == files[0]


def test_rotations_are_refused_unsigned_without_state_or_to_a_weak_key(tmp_path, keys, files):
    a, a_pub = keys["A"]
    key = signing.load_public_key(str(a_pub))
    base = files[0]
    rotation = create_rotation_patch(Source.of(base), 0, a, keys["B"][0].public_key, T0)
    with pytest.raises(PatchError, match="keeps a state"):
        apply_patch(base, rotation, key)    # no state to keep the next key in
    weak = hostile.small_order_keys()[1]
    body = patch_format.ROTATION_RECORD.pack(patch_format.KIND_ROTATION, weak)
    sealed = hostile.seal(base, body, 1, signer=a, round_=0, release_time=T0)
    (tmp_path / "m.tflite").write_bytes(base)
    (tmp_path / "w").write_bytes(sealed)
    with pytest.raises(PatchError, match="next key is refused"):
        apply_patch_file(str(tmp_path / "m.tflite"), str(tmp_path / "w"),
                         state_path=str(tmp_path / "s"), initial_round=0, public_key=key)
    to_itself = hostile.seal(base, patch_format.ROTATION_RECORD.pack(
        patch_format.KIND_ROTATION, a.public_key), 1, signer=a, round_=0, release_time=T0)
    (tmp_path / "w").write_bytes(to_itself)
    with pytest.raises(PatchError, match="names the key that signed it"):
        apply_patch_file(str(tmp_path / "m.tflite"), str(tmp_path / "w"),
                         state_path=str(tmp_path / "s"), initial_round=0, public_key=key)
    assert (tmp_path / "m.tflite").read_bytes() == base and not (tmp_path / "s").exists()


def test_no_key_is_refused_unless_unsigned_is_allowed_and_then_reported(
        tmp_path, files, c_signed_applier, jar):
    (tmp_path / "m.tflite").write_bytes(files[0])
    (tmp_path / "p").write_bytes(create_patch(files[0], files[1], 1))
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    for run in _three(c_signed_applier, jar, m, p, o):
        proc = run()
        assert proc.returncode == 2 and "--allow_unsigned" in proc.stderr, proc.stderr
        assert not o.exists()
    for run in _three(c_signed_applier, jar, m, p, o, "--allow_unsigned"):
        proc = run()
        assert proc.returncode == 0 and "UNSIGNED" in proc.stdout, proc.stderr
        assert "verified" not in proc.stdout and o.read_bytes() == files[1]
        os.unlink(o)


def test_an_empty_key_option_is_an_error_in_every_applier(tmp_path, files, keys,
                                                          c_signed_applier, jar):
    a, _ = keys["A"]
    (tmp_path / "m.tflite").write_bytes(files[0])
    # Signed by an attacker's key: with the key switched off it would go in.
    (tmp_path / "p").write_bytes(create_patch(files[0], files[1], 1, a))
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    for run in _three(c_signed_applier, jar, m, p, o, "--public_key="):
        proc = run()
        assert proc.returncode == 2 and "empty" in proc.stderr, proc.stderr
        assert not o.exists()
    with pytest.raises(PatchError, match="empty"):
        signing.load_public_key("")
    created = _py("create", f"--base={m}", f"--target={m}", f"--out={tmp_path}/x", "--round=1",
                  "--sign_key=")
    assert created.returncode == 2 and not (tmp_path / "x").exists()
    unsigned = _py("create", f"--base={m}", f"--target={m}", f"--out={tmp_path}/x", "--round=1")
    assert unsigned.returncode == 0 and "unsigned" in unsigned.stderr
    assert "UNSIGNED" in unsigned.stdout


def _trust_cases(files, a):
    """(name, patch, device round, device release time, clock, message fragment)."""
    old = create_patch(files[0], files[1], 1, a, release_time=T0 - 100)
    expired = create_patch(files[0], files[1], 1, a, release_time=T0, expires=T0 + 10)
    return [
        ("released before the last update", old, 0, T0, T0, "released"),
        ("released before the last update, no clock", old, 0, T0, 0, "released"),
        ("expired by the clock", expired, 0, 0, T0 + 50, "expired"),
    ]


@pytest.mark.parametrize("index", range(3))
def test_stale_and_expired_patches_are_refused_by_all_three(index, tmp_path, files, keys,
                                                            c_signed_applier, jar):
    a, a_pub = keys["A"]
    name, patch, round_, release, clock, message = _trust_cases(files, a)[index]
    digest = hashlib.sha256(files[0]).hexdigest()
    for kind in ("python", "c", "java"):
        folder = tmp_path / kind
        folder.mkdir()
        m, p, o = folder / "m.tflite", folder / "p", folder / "o.tflite"
        m.write_bytes(files[0])
        p.write_bytes(patch)
        (folder / "s").write_text(json.dumps({"round": round_, "sha256": digest,
                                              "release_time": release,
                                              "key": a.public_key.hex()}))
        common = [f"--base={m}", f"--patch={p}", f"--out={o}", f"--state={folder}/s",
                  f"--now={clock}"]
        if kind == "python":
            proc = _py("apply", *common)
        elif kind == "java":
            proc = run_jar(jar, "apply", *common)
        else:
            proc = _c(c_signed_applier, "--public_key", a_pub, "--round", round_,
                      "--release_time", release, "--now", clock, m, p, o)
        assert proc.returncode == 2 and message in proc.stderr, (name, kind, proc.stderr)
        assert not o.exists() and m.read_bytes() == files[0]
    # The same patch on a device whose time is before its expiry goes in.
    if "expired" in name:
        assert apply_patch(files[0], patch, signing.load_public_key(str(a_pub)),
                           now=T0 + 5) == files[1]


def test_rounds_cannot_freeze_a_device(tmp_path, files, keys, c_signed_applier, jar):
    """The last round is reserved; without a key, one patch advances at most 16 rounds."""
    base = files[0]
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    m.write_bytes(base)
    frozen = hostile.seal(base, b"", 0, round_=2 ** 32 - 1, release_time=T0)
    with pytest.raises(PatchError, match="outside"):
        create_patch(base, files[1], 2 ** 32 - 1)
    digest = hashlib.sha256(base).hexdigest()
    for patch, allowed in ((frozen, False), (create_patch(base, files[1], 17), False),
                           (create_patch(base, files[1], 16), True)):
        p.write_bytes(patch)
        (tmp_path / "s").write_text(json.dumps({"round": 0, "sha256": digest}))
        py = _py("apply", f"--base={m}", f"--patch={p}", f"--out={o}", f"--state={tmp_path}/s",
                 "--allow_unsigned")
        (tmp_path / "s").write_text(json.dumps({"round": 0, "sha256": digest}))
        java = run_jar(jar, "apply", f"--base={m}", f"--patch={p}", f"--out={o}",
                       f"--state={tmp_path}/s", "--allow_unsigned")
        c = _c(c_signed_applier, "--allow_unsigned", "--round", "0", m, p, o)
        for proc in (py, java, c):
            assert proc.returncode == (0 if allowed else 2), proc.stderr
            assert allowed or re.search("reserved|jumps|not newer", proc.stderr), proc.stderr
    # A signed patch may jump as far as its key holder wants (a catch-up).
    a, a_pub = keys["A"]
    jump = create_patch(base, files[1], 1000, a)
    assert apply_patch(base, jump, signing.load_public_key(str(a_pub)),
                       state=_state(base)) == files[1]
    with pytest.raises(PatchError, match="jumps from round 0 to 17"):
        apply_patch(base, create_patch(base, files[1], 17), allow_unsigned=True,
                    state=_state(base))
    assert apply_patch(base, create_patch(base, files[1], 17), allow_unsigned=True,
                       state=_state(base), max_round_jump=17) == files[1]


def _state(model):
    from tflite_edge.device_state import DeviceState  # pylint: disable=import-outside-toplevel
    return DeviceState(0, hashlib.sha256(model).digest())


def test_a_same_round_replay_is_refused_by_the_round_itself(tmp_path, files, c_signed_applier,
                                                            jar):
    """A device at round 1 holding round 1's file: a rival round-1 patch from that file."""
    rival = create_patch(files[1], _variant(files[1], 8), 1)
    digest = hashlib.sha256(files[1]).hexdigest()
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    m.write_bytes(files[1])
    p.write_bytes(rival)
    (tmp_path / "s").write_text(json.dumps({"round": 1, "sha256": digest}))
    procs = [_py("apply", f"--base={m}", f"--patch={p}", f"--out={o}", f"--state={tmp_path}/s",
                 "--allow_unsigned"),
             run_jar(jar, "apply", f"--base={m}", f"--patch={p}", f"--out={o}",
                     f"--state={tmp_path}/s", "--allow_unsigned"),
             _c(c_signed_applier, "--allow_unsigned", "--round", "1", m, p, o)]
    for proc in procs:
        assert proc.returncode == 2 and re.search("replayed|not newer", proc.stderr)
    assert not o.exists()


@pytest.mark.parametrize("value", ["4294967296", "4294967295", "abc", "0x10", "-1", "", "1 ",
                                   "+1", "99999999999999999999999"])
def test_the_c_driver_parses_numbers_strictly(value, tmp_path, files, c_signed_applier):
    (tmp_path / "m").write_bytes(files[0])
    (tmp_path / "p").write_bytes(create_patch(files[0], files[1], 1))
    proc = _c(c_signed_applier, "--allow_unsigned", f"--round={value}", tmp_path / "m",
              tmp_path / "p", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "decimal" in proc.stderr and not (tmp_path / "o").exists()


def test_the_jvm_reads_boolean_flags_as_absl_does(tmp_path, files, jar):
    """--no_state=false keeps the state (a replay is refused), as in Python."""
    m, p = tmp_path / "m.tflite", tmp_path / "p"
    m.write_bytes(files[1])
    p.write_bytes(create_patch(files[0], files[1], 1))
    (tmp_path / "m.tflite.state").write_text(json.dumps(
        {"round": 1, "sha256": hashlib.sha256(files[1]).hexdigest()}))
    m.write_bytes(files[0])   # reset to round 0's file behind the state's back
    for flag in ("--no_state=false", "--no_state=0", "--no_state=F", "--nono_state"):
        java = run_jar(jar, "apply", f"--base={m}", f"--patch={p}", "--allow_unsigned", flag)
        py = _py("apply", f"--base={m}", f"--patch={p}", "--allow_unsigned", flag)
        for proc in (java, py):
            assert proc.returncode == 2 and "replayed" in proc.stderr, (flag, proc.stderr)
    for flag in ("--no_state=maybe", "--nono_state=1"):
        java = run_jar(jar, "apply", f"--base={m}", f"--patch={p}", "--allow_unsigned", flag)
        py = _py("apply", f"--base={m}", f"--patch={p}", "--allow_unsigned", flag)
        assert java.returncode == 2 and py.returncode == 2, flag
    assert m.read_bytes() == files[0]
    assert run_jar(jar, "apply", f"--base={m}", f"--patch={p}", "--allow_unsigned=t",
                   "--no_state=True").returncode == 0


@pytest.mark.parametrize("content, why", [
    (b'\xef\xbb\xbf{"round": 0, "sha256": "%s"}', "byte-order mark"),
    (b"[" * 2000 + b"]" * 2000, "nested"),
    (b'{"round": 0, "sha256": "%s", "x": [[[1]]]}', "nested"),
    (b'{"round": 0, "sha256": "%s", "extra": 1}', "unknown field"),
    (b'{"round": 0, "sha256": "%s", "note": "\xc3\xa9"}', "ASCII"),
    (b'{"round": 0, "sha256": "%s", "release_time": -1}', "release_time"),
    (b'{"round": 0, "sha256": "%s", "key": "00"}', "key"),
    (b'{"round": 0, "sha256": "%s", "retired": ["zz"]}', "retired"),
])
def test_state_files_are_refused_alike_by_python_and_the_jvm(content, why, tmp_path, files,
                                                             jar):
    m, p = tmp_path / "m.tflite", tmp_path / "p"
    m.write_bytes(files[0])
    p.write_bytes(create_patch(files[0], files[1], 1))
    state = tmp_path / "m.tflite.state"
    state.write_bytes(content.replace(b"%s", hashlib.sha256(files[0]).hexdigest().encode()))
    for proc in (_py("apply", f"--base={m}", f"--patch={p}", "--allow_unsigned"),
                 run_jar(jar, "apply", f"--base={m}", f"--patch={p}", "--allow_unsigned")):
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "state file" in proc.stderr and why in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr
    assert m.read_bytes() == files[0]


def test_a_dangling_symlink_output_is_refused_by_all_three(tmp_path, files, c_signed_applier,
                                                           jar):
    m, p = tmp_path / "m.tflite", tmp_path / "p"
    m.write_bytes(files[0])
    p.write_bytes(create_patch(files[0], files[1], 1))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "planted.tflite", tmp_path / "out.tflite")
    out = tmp_path / "out.tflite"
    for run in _three(c_signed_applier, jar, m, p, out, "--allow_unsigned"):
        proc = run()
        assert proc.returncode == 2 and "symbolic link to nothing" in proc.stderr, proc.stderr
        assert os.listdir(tmp_path / "elsewhere") == [] and os.path.islink(out)


def test_a_huge_patch_file_costs_its_header_not_its_length(tmp_path, files, jar):
    """200 MB claiming to be an update of a 3 kB model: refused after 156 bytes."""
    m, p = tmp_path / "m.tflite", tmp_path / "p"
    m.write_bytes(files[0])
    size = 200 << 20
    header = bytearray(hostile.seal(files[0], b"", 0)[:patch_format.HEADER.size])
    struct.pack_into("<I", header, 96, size - patch_format.HEADER.size - 32)
    with open(p, "wb") as f:
        f.write(header)
        f.truncate(size)   # sparse: the rest reads as zeros
    tracemalloc.start()
    with pytest.raises(PatchError, match="more than any update"):
        apply_patch_file(str(m), str(p), str(tmp_path / "o"), allow_unsigned=True)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()
    java = subprocess.run(["java", "-Xmx32m", "-jar", jar, "apply", f"--base={m}",
                           f"--patch={p}", f"--out={tmp_path}/o", "--no_state",
                           "--allow_unsigned"], capture_output=True, text=True, timeout=120)
    assert java.returncode == 2 and "more than any update" in java.stderr, java.stderr
    # A whole-file update may be large, up to what the device accepts.
    struct.pack_into("<Q", header, 20, size)
    with open(p, "r+b") as f:
        f.write(header)
    with pytest.raises(PatchError, match="larger than this device accepts"):
        apply_patch_file(str(m), str(p), str(tmp_path / "o"), allow_unsigned=True,
                         max_patch_bytes=100 << 20)


def test_a_weight_buffer_also_used_elsewhere_is_not_writable(tmp_path, c_signed_applier, jar):
    """The kernel's buffer made the convolution's output too (same int8 type): not writable."""
    from ai_edge_litert import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
    base = bytearray(hostile.tiny_model())
    kernel = writable_regions(bytes(base), len(base))[4]
    model = schema.Model.GetRootAsModel(base, 0)
    graph = model.Subgraphs(0)
    conv = graph.Operators(0)
    assert conv.OutputsLength() == 1
    output = graph.Tensors(conv.Outputs(0))
    assert output.Type() == 9 and output.Buffer() != 0     # int8, with a buffer field
    at = output._tab.Pos + output._tab.Offset(8)            # Tensor.buffer
    struct.pack_into("<I", base, at, kernel.buffer)
    base = bytes(base)
    assert kernel.buffer not in writable_regions(base, len(base))
    record = ELEMENTS_RECORD.pack(KIND_ELEMENTS, 9, 0, 0, 0, 0, kernel.buffer, kernel.offset,
                                  kernel.count, 1, 1, 1) + b"\x00\x7f"
    target = bytearray(base)
    target[kernel.offset] = 0x7f
    patch = hostile.seal(base, record, 1, bytes(target))
    (tmp_path / "m").write_bytes(base)
    (tmp_path / "p").write_bytes(patch)
    with pytest.raises(PatchError, match="not one of this model's weight or bias buffers"):
        apply_patch(base, patch, allow_unsigned=True)
    c = _c(c_signed_applier, "--allow_unsigned", tmp_path / "m", tmp_path / "p", tmp_path / "o")
    assert c.returncode == 2 and "outside the model's weight" in c.stderr, c.stderr
    java = run_jar(jar, "apply", f"--base={tmp_path}/m", f"--patch={tmp_path}/p",
                   f"--out={tmp_path}/o", "--no_state", "--allow_unsigned")
    assert java.returncode == 2 and "weight or bias buffers" in java.stderr, java.stderr


def test_the_c_library_verifies_the_header_it_read_once(tmp_path, keys, files):
    """Storage that serves a genuine signed patch to the first read, then an attacker's.

    Before, the signature callback read the patch again and the round, result
    hash and body came from other reads: the attacker's unsigned header and
    body were applied with a key configured. Now the header is read once and
    verified in RAM, and the body is hashed on its one sequential pass.
    """
    from benchmarks import fuzz  # pylint: disable=import-outside-toplevel
    from conftest import build_c  # pylint: disable=import-outside-toplevel
    a, _ = keys["A"]
    base, genuine_target = files[0], files[1]
    genuine = create_patch(base, genuine_target, 1, a)
    evil_target = _variant(base, 7)
    evil = bytearray(create_patch(base, evil_target, 1))          # unsigned
    struct.pack_into("<I", evil, 8, 2 ** 32 - 1)                  # round: freeze the device
    evil[-32:] = hashlib.sha256(bytes(evil[:-32])).digest()
    device = fuzz.Setting(True, "never", key=a.public_key)
    cases = [(genuine, fuzz.ACCEPTED, switch, bytes(evil)) for switch in range(1, 40)]
    fuzz.write_batch(str(tmp_path / "batch"), base, device, cases)
    batch = build_c("dpu_batch", tmp_path)
    line, _ = fuzz.run_batches([batch], [str(tmp_path / "batch")])
    found = re.search(r"changing storage: (\d+) accepted as verified, (\d+) refused", line)
    accepted, refused = map(int, found.groups())
    # batch.c aborts if any output is not the genuine header's result. Every
    # switch that came before the applier's last read was refused; later ones
    # changed nothing it read and count as ordinary (accepted) inputs.
    assert accepted == 0 and refused >= 8, line
    assert line.startswith(f"39 inputs: {39 - refused} accepted, 0 refused at the result hash, "
                           "0 refused"), line


def test_a_malleable_signature_is_invalid_in_all_three(tmp_path, keys, files, c_signed_applier,
                                                       jar):
    """S + L in place of S: refused as an invalid signature (not a platform failure)."""
    a, a_pub = keys["A"]
    patch = bytearray(create_patch(files[0], files[1], 1, a))
    at = patch_format.HEADER.size + 32
    order = 2 ** 252 + 27742317777372353535851937790883648493
    s = int.from_bytes(patch[at:at + 32], "little") + order
    assert s < 2 ** 256
    patch[at:at + 32] = s.to_bytes(32, "little")
    patch[-32:] = hashlib.sha256(bytes(patch[:-32])).digest()
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    m.write_bytes(files[0])
    p.write_bytes(bytes(patch))
    for run in _three(c_signed_applier, jar, m, p, o, f"--public_key={a_pub}"):
        proc = run()
        assert proc.returncode == 2 and "signature is not valid" in proc.stderr, proc.stderr
    assert not o.exists()


def test_the_command_line_release_expiry_rotation_and_limits(tmp_path, keys, files):
    """create --release_time/--expires_in, rotate --next_public_key, apply's limits."""
    (a, a_pub), (b, b_pub) = keys["A"], keys["B"]
    m = tmp_path / "m.tflite"
    for r in (0, 1):
        (tmp_path / f"f{r}.tflite").write_bytes(files[r])
    m.write_bytes(files[0])
    made = _py("create", f"--base={tmp_path}/f0.tflite", f"--target={tmp_path}/f1.tflite",
               f"--out={tmp_path}/p", "--round=1", f"--sign_key={tmp_path}/A.pem",
               f"--release_time={T0}", "--expires_in=600")
    assert made.returncode == 0, made.stderr
    header = patch_format.decode((tmp_path / "p").read_bytes()).header
    assert (header.release_time, header.expires, header.key_id) == (T0, T0 + 600, a.key_id)
    shown = _py("inspect", f"--patch={tmp_path}/p").stdout
    assert f"released {T0}, expires {T0 + 600}" in shown
    late = _py("apply", f"--base={m}", f"--patch={tmp_path}/p", f"--public_key={a_pub}",
               "--initial_round=0", f"--now={T0 + 600}")
    assert late.returncode == 2 and "expired" in late.stderr
    rotated = _py("rotate", f"--base={m}", "--round=0", f"--sign_key={tmp_path}/A.pem",
                  f"--next_public_key={b_pub}", f"--out={tmp_path}/r", f"--release_time={T0}")
    assert rotated.returncode == 0 and b.key_id.hex() in rotated.stdout, rotated.stderr
    assert _py("apply", f"--base={m}", f"--patch={tmp_path}/r", f"--public_key={a_pub}",
               "--initial_round=0").returncode == 0
    assert json.loads((tmp_path / "m.tflite.state").read_text())["key"] == b.public_key.hex()
    jump = tmp_path / "j"
    jump.write_bytes(create_patch(files[0], files[1], 17))
    for limit, code in (("16", 2), ("17", 0)):
        proc = _py("apply", f"--base={m}", f"--patch={jump}", f"--out={tmp_path}/o",
                   f"--state={tmp_path}/fresh.state", "--initial_round=0", "--allow_unsigned",
                   f"--max_round_jump={limit}")
        assert proc.returncode == code, (limit, proc.stderr)
        if os.path.exists(tmp_path / "fresh.state"):
            os.unlink(tmp_path / "fresh.state")
    tiny = _py("apply", f"--base={m}", f"--patch={jump}", f"--out={tmp_path}/o2", "--no_state",
               "--allow_unsigned", "--max_patch_bytes=100")
    assert tiny.returncode == 2 and "larger than this device accepts" in tiny.stderr


def test_a_body_that_is_not_the_hashed_one_is_refused_by_all_three(tmp_path, files,
                                                                   c_signed_applier, jar):
    """The trailer resealed over a wrong body hash: the header's hash still binds the body."""
    patch = bytearray(create_patch(files[0], files[1], 1))
    patch[124] ^= 1
    patch[-32:] = hashlib.sha256(bytes(patch[:-32])).digest()
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    m.write_bytes(files[0])
    p.write_bytes(bytes(patch))
    for run in _three(c_signed_applier, jar, m, p, o, "--allow_unsigned"):
        proc = run()
        assert proc.returncode == 2 and "body does not match" in proc.stderr, proc.stderr
    assert not o.exists()


def test_the_reserved_round_is_refused_even_signed(tmp_path, keys, files, c_signed_applier,
                                                   jar):
    a, a_pub = keys["A"]
    m, p, o = tmp_path / "m.tflite", tmp_path / "p", tmp_path / "o.tflite"
    m.write_bytes(files[0])
    for round_, code in ((2 ** 32 - 1, 2), (2 ** 32 - 2, 0)):
        p.write_bytes(hostile.seal(files[0], b"", 0, signer=a, round_=round_, release_time=T0))
        for run in _three(c_signed_applier, jar, m, p, o, f"--public_key={a_pub}"):
            proc = run()
            assert proc.returncode == code, (round_, proc.stderr)
            assert code == 0 or re.search("reserved|not newer", proc.stderr), proc.stderr
