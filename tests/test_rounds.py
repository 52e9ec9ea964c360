"""End-to-end rounds on real digits, checked against the files the run wrote."""

import json
import os

import numpy as np
import pytest

from tf_dpu import RunConfig
from tf_dpu.models import build_model
from tf_dpu.outputs import load_weights, round_dir
from tf_dpu.data import Dataset
from tf_dpu.rounds import run, should_send
from tf_dpu.weights import BIAS, KERNEL, STATE, Layout, count_changed

SMALL = dict(rounds=4, initial_samples=100, samples_per_round=100, epochs=2,
             batch_size=64, seed=3)


def _run(data, tmp_path, **changes):
    config = RunConfig(**{**SMALL, "out_dir": str(tmp_path / "run"), **changes})
    return run(config, progress=None, data=data)


def _saved_rounds(result, data, model_name="mlp"):
    model = build_model(model_name, data.input_shape, data.num_classes, seed=0)
    init = load_weights(model, os.path.join(result.out_dir, "init"))
    rounds = [load_weights(model, round_dir(result.out_dir, r["round"]))
              for r in result.rounds]
    return Layout(model), init, rounds


@pytest.mark.parametrize("method", ["dpu", "gcpu", "lcpu", "rpu", "pruning", "stc"])
def test_partial_rounds_change_at_most_ceil_k_i_kernel_elements(small_mnist, tmp_path, method):
    result = _run(small_mnist, tmp_path, method=method, initial_deployment="partial")
    layout, init, saved = _saved_rounds(result, small_mnist)
    budget = int(np.ceil(0.01 * 266200))
    previous = init
    for record, weights in zip(result.rounds, saved):
        assert record["updated_elements"] <= budget
        assert record["total_elements"] == 266200
        if not record["sent"]:
            assert count_changed(layout, weights, previous, KERNEL, BIAS, STATE) == 0
            continue
        if method == "pruning":   # a whole sparse model each round
            base = [np.zeros_like(w) for w in weights]
        elif record["reinitialized"] or record["round"] == 0:
            base = init
        else:
            base = previous
        assert count_changed(layout, weights, base, KERNEL) == record["updated_elements"]
        assert count_changed(layout, weights, base, BIAS, STATE) == record["changed_biases"]
        assert record["updated_elements"] > 0.9 * budget
        # Every partial method spends exactly its budget of ceil(k * I) elements.
        assert record["selected_elements"] == budget
        previous = weights


def test_full_initial_deployment_then_partial_rounds(small_mnist, tmp_path):
    result = _run(small_mnist, tmp_path, method="dpu", reinit="off")
    first, later = result.rounds[0], result.rounds[1:]
    assert first["full_round"] and first["updated_elements"] > 0.99 * 266200
    assert all(r["updated_elements"] <= 2662 for r in later)
    assert first["test_accuracy"] > 0.25  # 8 steps on 100 digits; chance is 0.1


def test_reinitialization_fires_when_the_data_has_doubled(small_mnist, tmp_path):
    # 100, 200, 300, 400 samples: 300 > 2 * 100 at round 2, then 400 <= 2 * 300.
    dpu = _run(small_mnist, tmp_path / "a", method="dpu", initial_deployment="partial",
               reinit_compare="start")
    assert [r["reinitialized"] for r in dpu.rounds] == [False, False, True, False]
    # The product's rule restarts the clock only with a restart the device got.
    product = _run(small_mnist, tmp_path / "d", method="dpu", initial_deployment="partial")
    flags = [r["reinitialized"] for r in product.rounds]
    assert flags[:3] == [False, False, True] and flags[3] == (not product.rounds[2]["sent"])
    gcpu = _run(small_mnist, tmp_path / "b", method="gcpu")
    assert not any(r["reinitialized"] for r in gcpu.rounds)
    periodic = _run(small_mnist, tmp_path / "c", method="dpu", reinit="periodic",
                    reinit_period=3)
    assert [r["reinitialized"] for r in periodic.rounds] == [False, False, False, True]


def test_same_seed_same_flags_same_metrics(small_mnist, tmp_path):
    a = _run(small_mnist, tmp_path / "a", method="dpu", initial_deployment="partial")
    b = _run(small_mnist, tmp_path / "b", method="dpu", initial_deployment="partial")
    strip = lambda rounds: [{k: v for k, v in r.items() if not k.endswith("seconds")}  # noqa: E731
                            for r in rounds]
    assert strip(a.rounds) == strip(b.rounds)
    c = _run(small_mnist, tmp_path / "c", method="dpu", initial_deployment="partial", seed=4)
    assert strip(a.rounds) != strip(c.rounds)


def test_bias_policies(small_mnist, tmp_path):
    frozen = _run(small_mnist, tmp_path / "f", method="dpu", bias_policy="frozen")
    assert all(r["changed_biases"] == 0 for r in frozen.rounds[1:])
    masked = _run(small_mnist, tmp_path / "m", method="dpu", bias_policy="masked")
    for r in masked.rounds[1:]:
        assert r["updated_elements"] + r["changed_biases"] <= 2662
    full = _run(small_mnist, tmp_path / "u", method="dpu", bias_policy="full")
    assert any(r["changed_biases"] > 0 for r in full.rounds[1:] if r["sent"])


def test_frozen_policy_keeps_batchnorm_statistics(small_images, tmp_path):
    result = _run(small_images, tmp_path, model="resnet8", method="dpu",
                  bias_policy="frozen", update_ratio=0.05, reinit="off",
                  samples_per_round=50)
    layout, _, saved = _saved_rounds(result, small_images, "resnet8")
    assert layout.size(STATE) > 0
    for before, after in zip(saved, saved[1:]):
        assert count_changed(layout, after, before, STATE, BIAS) == 0


def test_fu_sends_everything_and_its_start_modes_run(small_mnist, tmp_path):
    for init in ("same_init", "last_round", "diff_init"):
        result = _run(small_mnist, tmp_path / init, method="fu", fu_init=init, rounds=2)
        assert all(r["full_round"] for r in result.rounds)
        assert result.rounds[0]["updated_elements"] > 0.99 * 266200


def test_iterative_single_round_variant_respects_the_budget(small_mnist, tmp_path):
    result = _run(small_mnist, tmp_path, method="dpu", iterative=True, iterative_decay=0.3,
                  iterative_epochs=1, rounds=2, initial_deployment="partial")
    assert all(r["updated_elements"] <= 2662 for r in result.rounds)
    assert result.rounds[0]["selected_elements"] == 2662


def test_run_folder_contents(small_mnist, tmp_path):
    result = _run(small_mnist, tmp_path, method="rpu", rounds=2)
    out = result.out_dir
    doc = json.load(open(os.path.join(out, "metrics.json")))
    assert doc["config"]["method"] == "rpu" and doc["config"]["update_ratio"] == 0.01
    assert [r["round"] for r in doc["rounds"]] == [0, 1]
    for key in ("train_samples", "val_accuracy", "test_accuracy", "updated_elements",
                "total_elements", "changed_biases", "reinitialized", "sent", "seconds"):
        assert key in doc["rounds"][0]
    # Where a round's time went: its training epochs are part of it.
    assert all(0 < r["training_seconds"] <= r["seconds"] for r in doc["rounds"])
    csv_lines = open(os.path.join(out, "metrics.csv")).read().splitlines()
    assert csv_lines[0].startswith("round,train_samples") and len(csv_lines) == 3
    assert open(os.path.join(out, "accuracy.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(out, "tensorboard"))
    assert not [f for _, _, files in os.walk(out) for f in files if "partial" in f]


def test_send_or_keep_rule():
    finite, diverged = [np.ones(3, np.float32)], [np.array([1.0, np.nan], np.float32)]
    assert not should_send(0.80, 0.81, finite)      # worse: the device keeps its model
    assert should_send(0.81, 0.81, finite)          # a tie goes to the newer candidate
    assert should_send(0.82, 0.81, finite)
    assert not should_send(0.99, 0.10, diverged)    # never a model with NaN or infinity
    assert not should_send(0.99, 0.10, [np.array([np.inf], np.float32)])


def test_a_worse_candidate_is_not_sent_and_nothing_changes_on_the_device(small_mnist,
                                                                         tmp_path):
    """Validation labels shifted by one: training only makes validation worse."""
    d = small_mnist
    shifted = Dataset("shifted", d.x_train, d.y_train, d.x_val, (d.y_val + 1) % 10, d.x_test,
                      d.y_test, d.num_classes)
    result = _run(shifted, tmp_path, rounds=3, method="dpu", export_tflite=True)
    layout, init, saved = _saved_rounds(result, shifted)
    files = [open(os.path.join(round_dir(result.out_dir, r), "model.tflite"), "rb").read()
             for r in range(3)]
    # Round 0's training lost to w0, but the device still gets its first file (w0's).
    assert [r["sent"] for r in result.rounds] == [True, False, False]
    for record, weights in zip(result.rounds, saved):
        assert record["candidate_val_accuracy"] < record["val_accuracy"]
        assert record["sent_bytes"] == (len(files[0]) if record["round"] == 0 else 0)
        assert record["updated_elements"] == record["changed_biases"] == 0
        assert count_changed(layout, weights, init, KERNEL, BIAS, STATE) == 0
        assert not os.path.exists(os.path.join(round_dir(result.out_dir, record["round"]),
                                               "update.patch"))
    assert files[1] == files[0] and files[2] == files[0]
