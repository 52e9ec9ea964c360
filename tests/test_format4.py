"""Patch format 4: the adaptive codes, the compact records, and the choice of format.

The three appliers are held to each other on format 4 by the shared hostile
cases (tests/hostile.py), the differential fuzzer (test_c_fuzz.py,
test_android.py) and the run chains (test_c_applier.py, test_android.py);
here: the codes' own rules, sizes against format 3 on real rounds, and every
way a user picks the format.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT, patches_in_formats, run_cli
from tflite_edge import adaptive, patch_format, positions
from tflite_edge.create import create_patch
from tflite_edge.errors import PatchError


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_adaptive_positions_and_values_round_trip(data):
    count = data.draw(st.integers(1, 3000))
    chosen = sorted(data.draw(st.sets(st.integers(0, count - 1), min_size=1, max_size=400)))
    stream = adaptive.encode_positions(chosen)
    assert adaptive.decode_positions(stream, count, len(chosen)).tolist() == chosen
    size = data.draw(st.sampled_from([1, 2, 4]))
    width = 1 << (8 * size)
    zigzag = data.draw(st.lists(st.integers(1, width - 1), min_size=1, max_size=300))
    stream = adaptive.encode_values(zigzag)
    assert adaptive.decode_values(stream, len(zigzag), size).tolist() == zigzag


def test_the_largest_values_and_gaps_a_buffer_allows_round_trip():
    # A gap of 2^32 - 2 (class 32, the shared tree) and int32 deltas at both ends.
    last = 2 ** 32 - 2
    stream = adaptive.encode_positions([last])
    assert adaptive.decode_positions(stream, 2 ** 32 - 1, 1).tolist() == [last]
    extremes = [1, 2, 2 ** 32 - 1, 2 ** 32 - 2, 2 ** 31, 2 ** 31 - 1]
    assert adaptive.decode_values(adaptive.encode_values(extremes), 6, 4).tolist() == extremes
    with pytest.raises(PatchError, match="longer than its limit|not below"):
        adaptive.decode_positions(stream, 2 ** 32 - 2, 1)   # one element short


def test_a_stream_is_exactly_the_encoders_bytes():
    stream = adaptive.encode_values([3, 4, 7, 2] * 50)
    assert stream[0] == 0 and len(stream) >= adaptive.MIN_STREAM
    with pytest.raises(PatchError, match="after its last code"):
        adaptive.decode_values(stream + b"\0", 200, 1)
    with pytest.raises(PatchError, match="ends before its last code"):
        adaptive.decode_values(stream[:-3], 200, 1)
    with pytest.raises(PatchError, match="zero byte"):
        adaptive.decode_values(b"\1" + stream[1:], 200, 1)
    with pytest.raises(PatchError, match="outside its range"):
        adaptive.decode_values(b"\0\xff\xff\xff\xff" + stream[5:], 200, 1)
    with pytest.raises(ValueError, match="no zero delta"):
        adaptive.encode_values([0])


def test_varints_have_one_spelling():
    for value in (0, 1, 127, 128, 300, 2 ** 21, 2 ** 32 - 1):
        spelled = patch_format.write_varint(value)
        assert patch_format.read_varint(spelled, 0, len(spelled)) == (value, len(spelled))
    for bad, message in ((b"\x80\x00", "shortest form"), (b"\xff\xff\xff\xff\x10", "exceeds"),
                         (b"\x80\x80\x80\x80\x80\x01", "longer than five"),
                         (b"\x80", "ends inside")):
        with pytest.raises(PatchError, match=message):
            patch_format.read_varint(bad, 0, len(bad))
    with pytest.raises(PatchError):
        patch_format.write_varint(2 ** 32)


def test_format_4_is_smaller_on_every_real_round_and_rebuilds_the_same_file(exported_files):
    sizes = {3: 0, 4: 0}
    for patches, records in patches_in_formats(exported_files, (3, 4)):
        for version, patch in patches.items():
            sizes[version] += len(patch)
        # Never larger, record by record: the writer keeps format 3's code
        # where the adaptive one does not win.
        for a, b in zip(records[3], records[4]):
            assert b.position_bytes <= a.position_bytes and b.value_bytes <= a.value_bytes
    assert sizes[4] < 0.95 * sizes[3], sizes


def _tool(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_patch_command_writes_either_format_and_inspects_with_the_base(exported_files, tmp_path):
    (tmp_path / "a.tflite").write_bytes(exported_files[0])
    (tmp_path / "b.tflite").write_bytes(exported_files[1])
    common = [f"--base={tmp_path}/a.tflite", f"--target={tmp_path}/b.tflite", "--round=1"]
    for version in ("3", "4", "5", None):
        out = tmp_path / f"p{version}"
        made = _tool("tflite_edge.patch", "create", *common, f"--out={out}",
                     *([f"--patch_format={version}"] if version else []))
        assert made.returncode == 0, made.stderr
        assert out.read_bytes()[4] == int(version or 5)
    assert _tool("tflite_edge.patch", "create", *common, f"--out={tmp_path}/x",
                 "--patch_format=2").returncode == 2
    bare = _tool("tflite_edge.patch", "inspect", f"--patch={tmp_path}/pNone")
    assert bare.returncode == 0 and "(read without its base)" in bare.stdout
    assert "information bound" not in bare.stdout
    full = _tool("tflite_edge.patch", "inspect", f"--patch={tmp_path}/pNone",
                 f"--base={tmp_path}/a.tflite")
    assert full.returncode == 0 and "patch format v5" in full.stdout
    assert "offset" in full.stdout and "information bound" in full.stdout
    assert "adaptive" in full.stdout


def test_a_run_exports_format_3_patches_when_asked(tmp_path):
    proc = run_cli("--dataset=digits", "--validation_samples=100", "--rounds=3",
                   "--initial_samples=200", "--samples_per_round=150", "--epochs=1",
                   "--export_tflite", "--patch_format=3", f"--out_dir={tmp_path}/run",
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    patches = [tmp_path / "run" / f"round_{r:03d}" / "update.patch" for r in (1, 2)]
    written = [p.read_bytes() for p in patches if p.exists()]
    assert written and all(p[4] == 3 for p in written)
    config = json.load(open(tmp_path / "run" / "metrics.json"))["config"]
    assert config["patch_format"] == 3
    refused = run_cli("--dataset=digits", "--patch_format=3", f"--out_dir={tmp_path}/r2")
    assert refused.returncode == 2 and "add --export_tflite" in refused.stderr


def test_a_fleet_of_format_3_devices_gets_format_3_updates(exported_run, tmp_path):
    from tflite_edge.fleet import Releases  # pylint: disable=import-outside-toplevel
    result, _ = exported_run
    old = Releases(result.out_dir, version=3)
    device = old.releases[0]
    update = old.update(device)
    assert update.policy != "chain"   # the run wrote format 5 per-round patches
    assert all(open(p, "rb").read()[4] == 3 for p in update.patches)
    with pytest.raises(PatchError, match="patch format 5, and the devices read format 3"):
        old.update(device, "chain")
    assert Releases(result.out_dir).update(device, "chain").patches   # format 5 devices
    plan = _tool("tflite_edge.fleet", "plan", f"--run_dir={result.out_dir}", "--device_round=0",
                 "--policy=catchup", "--patch_format=3", f"--out={tmp_path}/u", "--json")
    assert plan.returncode == 0, plan.stderr
    sent = json.loads(plan.stdout)["patches"]
    assert sent and all(open(p, "rb").read()[4] == 3 for p in sent)
    chain = _tool("tflite_edge.fleet", "plan", f"--run_dir={result.out_dir}",
                  "--device_round=0", "--policy=chain", "--patch_format=3")
    assert chain.returncode == 2 and chain.stderr.splitlines()[-1].startswith("error: ")
    assert "is patch format 5, and the devices read format 3" in chain.stderr
    simulated = _tool("tflite_edge.fleet", "simulate", f"--run_dir={result.out_dir}",
                      "--devices=20", "--patch_format=3", f"--out={tmp_path}/sim.json")
    assert simulated.returncode == 0, simulated.stderr
    results = json.load(open(tmp_path / "sim.json"))
    assert all(r["files_match"] for r in results.values())
    assert "chain" not in results or results["chain"]["updates"] == 0


def test_the_adaptive_codes_are_chosen_on_a_real_run(exported_files):
    chosen = set()
    for r in range(1, len(exported_files)):
        if exported_files[r - 1] != exported_files[r]:
            patch = create_patch(exported_files[r - 1], exported_files[r], r)
            chosen |= {(x.coding, x.value_coding)
                       for x in patch_format.decode(patch, exported_files[r - 1]).records}
    assert positions.ADAPTIVE in {p for p, _ in chosen}
    assert np.any([v == patch_format.VALUES_ADAPTIVE for _, v in chosen])
