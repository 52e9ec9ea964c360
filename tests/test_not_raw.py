"""Bases whose weights are not raw tensors: refused by every applier, in one line.

TFLite Micro's lookup-table compression, an Edge TPU compiled model and a
sparse weight tensor each mark the tiny model (tests/hostile.py). The element
patch against each has correct hashes and a valid signature, so only the
not-raw check can refuse it; the base must be left as it was. A signed
whole-file update, the documented way to update such a device, still applies.
"""

import re
import subprocess

import pytest

import hostile
from conftest import run_jar
from tflite_edge import signing
from tflite_edge.apply import apply_patch_file
from tflite_edge.create import create_patch
from tflite_edge.errors import PatchError

CASES = hostile.not_raw_bases()
IDS = [c.name for c in CASES]


@pytest.fixture()
def device(tmp_path):
    _, public = hostile.test_key()
    (tmp_path / "key.pub").write_bytes(public)
    return tmp_path


def _place(device, case, patch):
    (device / "model.tflite").write_bytes(case.base)
    (device / "p").write_bytes(patch)
    return str(device / "model.tflite"), str(device / "p"), str(device / "out.tflite")


def _untouched(device, case):
    assert (device / "model.tflite").read_bytes() == case.base
    assert not (device / "out.tflite").exists()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_python_refuses_a_non_raw_base_and_takes_a_whole_file(case, device):
    key = signing.load_public_key(str(device / "key.pub"))
    model, patch, out = _place(device, case, case.patch)
    with pytest.raises(PatchError, match=re.escape(f"{hostile.NOT_RAW} ({case.python}")):
        apply_patch_file(model, patch, out, key)
    _untouched(device, case)
    model, patch, out = _place(device, case, case.whole_file)
    apply_patch_file(model, patch, out, key)
    assert (device / "out.tflite").read_bytes() == case.result


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_c_refuses_a_non_raw_base_and_takes_a_whole_file(case, device, c_signed_applier):
    def run(patch_bytes):
        model, patch, out = _place(device, case, patch_bytes)
        return subprocess.run([c_signed_applier, "--public_key", str(device / "key.pub"),
                               model, patch, out], capture_output=True, text=True)
    proc = run(case.patch)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert hostile.NOT_RAW in proc.stderr and case.python.split()[0] in proc.stderr
    _untouched(device, case)
    proc = run(case.whole_file)
    assert proc.returncode == 0, proc.stderr
    assert (device / "out.tflite").read_bytes() == case.result


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_jar_refuses_a_non_raw_base_and_takes_a_whole_file(case, device, jar):
    def run(patch_bytes):
        model, patch, out = _place(device, case, patch_bytes)
        return run_jar(jar, "apply", f"--base={model}", f"--patch={patch}", f"--out={out}",
                       f"--public_key={device}/key.pub", "--no_state")
    proc = run(case.patch)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{hostile.NOT_RAW} ({case.python}" in proc.stderr, proc.stderr
    _untouched(device, case)
    proc = run(case.whole_file)
    assert proc.returncode == 0, proc.stderr
    assert (device / "out.tflite").read_bytes() == case.result


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_server_writes_no_element_patch_for_a_non_raw_model(case):
    target = bytearray(case.base)
    with pytest.raises(PatchError, match=re.escape(hostile.NOT_RAW)):
        create_patch(case.base, bytes(target), 1)
