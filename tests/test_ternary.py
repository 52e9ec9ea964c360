"""`--method=stc`: sparse ternary compression of the warm-started full update."""

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from tf_dpu import RunConfig, ternary
from tf_dpu.errors import ConfigError
from tf_dpu.rounds import run
from tflite_edge.model_file import ModelFile

INT8 = 9   # TensorType.INT8


def _layers(seed=0):
    rng = np.random.RandomState(seed)
    start = [rng.randn(20, 30).astype(np.float32), rng.randn(30).astype(np.float32),
             rng.randn(30, 10).astype(np.float32)]
    final = [w + rng.randn(*w.shape).astype(np.float32) * s
             for w, s in zip(start, (0.1, 0.1, 2.0))]
    return start, final


def test_each_layer_keeps_its_own_share_of_the_largest_changes():
    start, final = _layers()
    masks = ternary.select(final, start, [0, 2], None, 0.1, budget=90)
    assert masks[1] is None
    assert (masks[0].sum(), masks[2].sum()) == (60, 30)
    for i in (0, 2):
        change = np.abs(final[i] - start[i])
        assert change[masks[i]].min() >= change[~masks[i]].max()
    # With a file, |change| is counted in each element's int8 steps.
    scales = [np.full((20, 30), 1.0, np.float32), None, np.full((30, 10), 1.0, np.float32)]
    scales[0][:, :3] = 1e-3   # three columns whose step is tiny move by many steps
    masks = ternary.select(final, start, [0, 2], scales, 0.1, budget=90)
    assert masks[0][:, :3].all() and masks[0].sum() == 60


def test_float_values_move_by_plus_or_minus_the_layers_mean_change():
    start, final = _layers()
    masks = ternary.select(final, start, [0, 2], None, 0.1, budget=90)
    moved = ternary.ternarize(final, start, masks, None)
    np.testing.assert_array_equal(moved[1], final[1])   # the caller's bias policy decides
    for i in (0, 2):
        change = final[i] - start[i]
        mu = np.mean(np.abs(change[masks[i]]))
        step = moved[i] - start[i]
        np.testing.assert_array_equal(moved[i][~masks[i]], start[i][~masks[i]])
        np.testing.assert_allclose(step[masks[i]], np.sign(change[masks[i]]) * mu, rtol=1e-5)
    assert abs(np.abs(moved[2] - start[2]).max() - np.abs(moved[0] - start[0]).max()) > 1


def test_int8_values_are_whole_steps_on_the_files_grid_and_stay_in_range():
    start, final = _layers()
    scale = np.full((20, 30), 0.05, np.float32)   # |start| < 100 steps
    scale[:, 1] = 0.08   # a channel with its own step
    start[0][0, 0] = 126.6 * 0.05   # int8 127 in the file: moving up would clip
    final[0][0, 0] = start[0][0, 0] + 5.0
    scales = [scale, None, None]
    masks = ternary.select(final, start, [0], scales, 0.1, budget=60)
    moved = ternary.ternarize(final, start, masks, scales)
    q_start, q_moved = np.rint(start[0] / scale), moved[0] / scale
    np.testing.assert_allclose(q_moved[masks[0]], np.rint(q_moved[masks[0]]), atol=1e-3)
    steps = np.rint(q_moved) - q_start
    mu = max(1.0, np.rint(np.mean(np.abs((final[0] - start[0])[masks[0]] / scale[masks[0]]))))
    assert masks[0][0, 0] and np.rint(q_moved[0, 0]) == 127
    assert set(np.abs(steps[masks[0]]).ravel()) - {0.0} <= {mu}
    assert (np.sign(steps[masks[0]])[1:] == np.sign((final[0] - start[0])[masks[0]])[1:]).all()
    np.testing.assert_array_equal(moved[0][~masks[0]], start[0][~masks[0]])


def _int8_kernels(path):
    model = ModelFile(open(path, "rb").read())
    return {t.buffer: model.array(t).astype(np.int64) for t in model.tensors
            if t.type == INT8 and len(t.shape) >= 2 and model.buffers[t.buffer].length}


def _ternary_rounds(out_dir, rounds):
    """Per sent round, each kernel's int8 change: zero or ±μ of that kernel (μ >= 1)."""
    records = json.load(open(os.path.join(out_dir, "metrics.json")))["rounds"]
    checked = 0
    for r in range(1, rounds):
        if not records[r]["sent"]:
            continue
        before = _int8_kernels(os.path.join(out_dir, f"round_{r - 1:03d}", "model.tflite"))
        after = _int8_kernels(os.path.join(out_dir, f"round_{r:03d}", "model.tflite"))
        changed = 0
        for buffer, old in before.items():
            delta = after[buffer] - old
            moved = np.abs(delta[(delta != 0) & (np.abs(after[buffer]) != 127)])
            assert len(set(moved.tolist())) <= 1, (r, buffer, set(moved.tolist()))
            changed += int(np.count_nonzero(delta))
        # The server's model is what the device holds: every selected element
        # moved in the file (none rounded back to where it was).
        assert changed == records[r]["selected_elements"] == records[r]["updated_elements"]
        checked += 1
    return checked


def test_the_command_line_sends_ternary_int8_changes(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--method=stc", "--dataset=digits", "--validation_samples=100",
                   "--rounds=3", "--initial_samples=200", "--samples_per_round=150",
                   "--epochs=2", "--update_ratio=0.02", "--export_tflite", f"--out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.load(open(out / "metrics.json"))["rounds"]
    assert all(r["full_test_accuracy"] > 0 for r in records[1:])
    assert _ternary_rounds(str(out), 3) >= 1


def test_a_batchnorm_model_gets_whole_steps_through_its_folded_scales(small_images, tmp_path):
    config = RunConfig(model="ds_cnn", rounds=3, initial_samples=100, samples_per_round=100,
                       epochs=2, batch_size=32, seed=2, method="stc", update_ratio=0.05,
                       export_tflite=True, out_dir=str(tmp_path / "run"))
    result = run(config, progress=None, data=small_images)
    assert result.config["bias_policy"] == "frozen"
    assert all(r["changed_biases"] == 0 for r in result.rounds[1:])
    assert _ternary_rounds(result.out_dir, 3) >= 1


def test_dpu_held_to_ternary_values_sends_what_validation_judged(small_mnist, tmp_path):
    config = RunConfig(rounds=3, initial_samples=200, samples_per_round=200, epochs=2,
                       batch_size=64, seed=4, update_ratio=0.02, value_grid="ternary",
                       export_tflite=True, out_dir=str(tmp_path / "run"))
    result = run(config, progress=None, data=small_mnist)
    assert _ternary_rounds(result.out_dir, 3) >= 1
    for record in result.rounds[1:]:
        if record["sent"]:
            # The candidate validation chose is the projected model itself.
            assert record["val_accuracy"] == record["candidate_val_accuracy"]
            assert abs(record["tflite_test_accuracy"] - record["test_accuracy"]) <= 3 / 300


@pytest.mark.parametrize("changes, refused", [
    (dict(method="rpu"), "not for rpu"), (dict(target_gap=1.0), "--target_gap"),
    (dict(iterative=True), "--iterative"),
    (dict(budget_bytes=5000, export_tflite=True, out_dir="x"), "--budget_bytes")])
def test_ternary_values_are_refused_where_they_have_no_meaning(changes, refused):
    with pytest.raises(ConfigError, match=refused):
        RunConfig(value_grid="ternary", **changes).resolved()
