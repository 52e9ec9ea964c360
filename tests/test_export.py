"""The server's int8 deployment end to end: files, patches, both appliers, both runtimes."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, require_module, round_folders
from tflite_edge import runtime
from tflite_edge.apply import apply_patch


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
    # Frozen scales with headroom and bounded training: the device computes
    # almost what the server does (measured here: 1-2 of the 300 test samples
    # apart; the benchmark's 700-sample test set: 0.29 point at most).
    for r in doc["rounds"]:
        assert abs(r["tflite_test_accuracy"] - r["test_accuracy"]) <= 3 / 300
        assert r["export_seconds"] > 0   # converting, checking and patching take time


def test_patch_chain_reproduces_every_round_with_both_appliers(exported_run, c_applier,
                                                               tmp_path):
    result, _ = exported_run
    folders = round_folders(result)
    device_py = tmp_path / "py.tflite"
    device_c = tmp_path / "c.tflite"
    device_py.write_bytes(open(os.path.join(folders[0], "model.tflite"), "rb").read())
    device_c.write_bytes(device_py.read_bytes())
    initialise = ["--initial_round=0"]
    for folder in folders[1:]:
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            proc = subprocess.run([sys.executable, "-m", "tflite_edge.patch", "apply",
                                   f"--base={device_py}", f"--patch={patch}", "--allow_unsigned",
                                   *initialise],
                                  cwd=ROOT, capture_output=True, text=True)
            initialise = []
            assert proc.returncode == 0, proc.stderr
            out = tmp_path / "next.tflite"
            proc = subprocess.run([c_applier, "--allow_unsigned", str(device_c), patch, str(out)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
            os.replace(out, device_c)
        expected = open(os.path.join(folder, "model.tflite"), "rb").read()
        assert device_py.read_bytes() == expected
        assert device_c.read_bytes() == expected


def test_the_devices_patched_file_scores_what_the_server_measured(exported_run):
    """The chain of patches applied on the device, run in LiteRT and TFLite Micro.

    The server measured `tflite_test_accuracy` on its own file in LiteRT; the
    device's file, rebuilt patch by patch, must score the same in LiteRT, and
    TFLite Micro must agree with LiteRT to one int8 step per logit.
    """
    result, data = exported_run
    require_module("tflite_micro.python.tflite_micro.runtime", "tflite-micro")
    folders = round_folders(result)
    device = open(os.path.join(folders[0], "model.tflite"), "rb").read()
    for folder, record in zip(folders[1:], result.rounds[1:]):
        patch = os.path.join(folder, "update.patch")
        if os.path.exists(patch):
            device = apply_patch(device, open(patch, "rb").read(), allow_unsigned=True)
        x, y = data.x_test, data.y_test
        litert = runtime.logits(device, x)
        assert np.mean(np.argmax(litert, -1) == y) == record["tflite_test_accuracy"]
        tflm = runtime.micro_logits(device, x).astype(int)
        # The two runtimes round requantization differently in rare cases
        # (seen on the converter's own files too): at most one int8 step apart.
        assert np.abs(litert.astype(int) - tflm).max() <= 1
        tflm_accuracy = np.mean(np.argmax(tflm, -1) == y)
        assert abs(tflm_accuracy - record["tflite_test_accuracy"]) <= 1 / len(y)
