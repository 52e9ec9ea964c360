"""The server's int8 deployment end to end: files, patches, both appliers, both runtimes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from tflite_edge import runtime
from tflite_edge.apply import apply_patch


def _round_files(result):
    return [os.path.join(result.out_dir, f"round_{r['round']:03d}") for r in result.rounds]


def test_metrics_carry_the_deployment_figures(exported_run):
    result, _ = exported_run
    doc = json.load(open(os.path.join(result.out_dir, "metrics.json")))
    first, later = doc["rounds"][0], doc["rounds"][1:]
    assert first["sent_bytes"] == first["tflite_bytes"] == os.path.getsize(
        os.path.join(result.out_dir, "round_000", "model.tflite"))
    for r in later:
        patch = os.path.join(result.out_dir, f"round_{r['round']:03d}", "update.patch")
        if r["sent"]:
            assert r["patch_bytes"] == os.path.getsize(patch) == r["sent_bytes"]
            assert r["patch_bytes"] < r["tflite_bytes"] / 10
        else:
            assert r["patch_bytes"] == 0 and not os.path.exists(patch)
        assert r["clipped_fraction"] == 0.0   # training stays inside the frozen scales
    for r in doc["rounds"]:
        assert abs(r["tflite_test_accuracy"] - r["test_accuracy"]) <= 0.02


def test_patch_chain_reproduces_every_round_with_both_appliers(exported_run, c_applier,
                                                               tmp_path):
    result, _ = exported_run
    folders = _round_files(result)
    device_py = tmp_path / "py.tflite"
    device_c = tmp_path / "c.tflite"
    device_py.write_bytes(open(os.path.join(folders[0], "model.tflite"), "rb").read())
    device_c.write_bytes(device_py.read_bytes())
    initialise = ["--initial_round=0"]
    for folder in folders[1:]:
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            proc = subprocess.run([sys.executable, "-m", "tflite_edge.patch", "apply",
                                   f"--base={device_py}", f"--patch={patch}", *initialise],
                                  cwd=ROOT, capture_output=True, text=True)
            initialise = []
            assert proc.returncode == 0, proc.stderr
            out = tmp_path / "next.tflite"
            proc = subprocess.run([c_applier, str(device_c), patch, str(out)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            os.replace(out, device_c)
        expected = open(os.path.join(folder, "model.tflite"), "rb").read()
        assert device_py.read_bytes() == expected
        assert device_c.read_bytes() == expected


def _micro_logits(micro, model, x):
    interpreter = micro.Interpreter.from_bytes(model)
    detail = interpreter.get_input_details(0)["quantization_parameters"]
    outputs = []
    for sample in x:
        interpreter.set_input(
            runtime.quantize_input(sample[None], detail["scales"][0], detail["zero_points"][0]), 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0).copy())
    return np.concatenate(outputs)


def test_patched_file_runs_like_the_servers_in_litert_and_tflite_micro(exported_run):
    result, data = exported_run
    micro = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    folders = _round_files(result)
    device = open(os.path.join(folders[0], "model.tflite"), "rb").read()
    for folder in folders[1:]:
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            device = apply_patch(device, open(patch, "rb").read())
    server = open(os.path.join(folders[-1], "model.tflite"), "rb").read()
    x = data.x_test[:60]
    litert = runtime.logits(device, x)
    assert np.array_equal(litert, runtime.logits(server, x))
    tflm = _micro_logits(micro, device, x)
    assert np.array_equal(tflm, _micro_logits(micro, server, x))
    # The two runtimes round requantization differently in rare cases (seen
    # on the converter's own files too): at most one int8 step apart.
    assert np.abs(litert.astype(int) - tflm).max() <= 1
    assert np.mean(np.argmax(litert, -1) == np.argmax(tflm, -1)) >= 0.95
