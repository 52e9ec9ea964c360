"""The reference protocol's details: pre-selection, augmentation, re-initialization rules."""

import numpy as np
import pytest
import tensorflow as tf

from tf_dpu import RunConfig, selection
from tf_dpu.augment import PADDING, crop_flip
from tf_dpu.models import build_model
from tf_dpu.rounds import Reported, run
from tf_dpu.training import Trainer
from tf_dpu.weights import KERNEL, Layout


def test_layer_preselect_caps_each_layer_before_the_global_sort():
    # Layer 2 holds the ten best scores; cut to 65 % it keeps int(0.65 * 10) = 6.
    scores = {0: np.linspace(0.0, 1.0, 100), 2: np.linspace(2.0, 3.0, 10)}
    plain = selection.top_k(scores, 10, 3)
    assert plain[2].sum() == 10
    cut = selection.top_k(selection.preselect(scores, 0.65), 10, 3)
    assert cut[2].sum() == 6 and cut[0].sum() == 4
    assert cut[2][-6:].all() and cut[0][-4:].all()     # the best of each layer
    assert selection.preselect(scores, 1.0) is scores


def test_pruning_magnitude_honours_the_preselect():
    weights = [np.array([9.0, 8.0, 7.0, 6.0]), np.array([0.5, 0.4, 0.3, 0.2, 0.1])]
    masks = selection.magnitude(weights, [0, 1], 4, layer_preselect=0.5)
    assert masks[0].tolist() == [True, True, False, False]
    assert masks[1].tolist() == [True, True, False, False, False]


def test_crop_flip_takes_padded_crops_and_flips_half():
    n, size = 64, 6
    x = tf.constant(np.arange(n * size * size, dtype=np.float32).reshape(n, size, size, 1) + 1)
    fill = -7.0
    out = crop_flip(x, tf.constant([1, 2], tf.int64), fill).numpy()
    again = crop_flip(x, tf.constant([1, 2], tf.int64), fill).numpy()
    other = crop_flip(x, tf.constant([1, 3], tf.int64), fill).numpy()
    assert out.shape == x.shape and np.array_equal(out, again) and not np.array_equal(out, other)
    padded = np.pad(x.numpy(), [(0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)],
                    constant_values=fill)
    flipped = 0
    for i in range(n):
        found = None
        for dy in range(2 * PADDING + 1):
            for dx in range(2 * PADDING + 1):
                crop = padded[i, dy:dy + size, dx:dx + size]
                if np.array_equal(out[i], crop):
                    found = "plain"
                elif np.array_equal(out[i], crop[:, ::-1]):
                    found = "flipped"
        assert found, f"sample {i} is no crop of its padded image"
        flipped += found == "flipped"
    assert 16 < flipped < 48      # about half
    assert (out == fill).any()    # some crops reach into the padding


def test_augmented_training_draws_new_crops_every_step():
    model = build_model("cnn", (8, 8, 3), 10, seed=0)
    seen = []

    def spy(batch, key):
        seen.append(key)
        return crop_flip(batch, key, 0.0)

    trainer = Trainer(model, Layout(model), batch_size=16, seed=5, augment=spy)
    x = tf.constant(np.random.RandomState(0).rand(40, 8, 8, 3).astype(np.float32))
    y = tf.constant(np.arange(40) % 10)
    before = model.get_weights()
    trainer.train_epoch(x, y, 1e-3)
    assert seen     # traced into the epoch function
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert int(trainer.state()[-2]) == 3   # 3 steps counted: the next epoch's keys are new


def test_augment_refuses_non_images(small_mnist):
    from tf_dpu.data import Dataset  # pylint: disable=import-outside-toplevel
    from tf_dpu.errors import ConfigError  # pylint: disable=import-outside-toplevel
    d = small_mnist
    flat = Dataset("flat", d.x_train.reshape(len(d.x_train), -1), d.y_train,
                   d.x_val.reshape(len(d.x_val), -1), d.y_val,
                   d.x_test.reshape(len(d.x_test), -1), d.y_test, d.num_classes)
    with pytest.raises(ConfigError, match="--augment=crop_flip crops and flips images"):
        run(RunConfig(augment="crop_flip", rounds=1, epochs=1), progress=None, data=flat)


def test_reported_accuracy_carries_forward_only_under_the_reference_rule():
    reported = Reported(0.9, 0.88)
    assert not reported.update(0.8, 0.79, carry=False) and reported.test == 0.79
    reported = Reported(0.9, 0.88)
    assert reported.update(0.8, 0.79, carry=True) and (reported.val, reported.test) == (0.9, 0.88)
    assert not reported.update(0.9, 0.91, carry=True) and reported.test == 0.91   # a tie moves on


_REINIT = dict(rounds=4, initial_samples=100, samples_per_round=100, epochs=1, batch_size=64,
               seed=3, method="dpu", reinit="doubling", initial_deployment="full",
               single_step_epochs=8)


def test_a_restart_that_loses_to_the_device_is_retried_next_round(small_mnist):
    """Product rule: a trained model beats a 1 % update of w0, so the restart is not sent and
    the doubling clock is not reset: the next round restarts again."""
    rounds = run(RunConfig(**_REINIT), progress=None, data=small_mnist).rounds
    assert [r["reinitialized"] for r in rounds] == [False, False, True, True]
    assert not rounds[2]["sent"] and not rounds[3]["sent"]
    assert rounds[3]["test_accuracy"] == rounds[1]["test_accuracy"]   # the device kept its model
    assert not any(r["carried_forward"] for r in rounds)


def test_the_reference_rule_deploys_the_restart_and_reports_the_previous_round(small_mnist):
    rounds = run(RunConfig(**_REINIT, reinit_compare="start"), progress=None,
                 data=small_mnist).rounds
    assert [r["reinitialized"] for r in rounds] == [False, False, True, False]
    assert rounds[2]["sent"] and rounds[2]["carried_forward"]
    assert rounds[2]["test_accuracy"] == rounds[1]["test_accuracy"]
    assert rounds[2]["updated_elements"] > 0


def test_iterative_variant_keeps_the_contribution_of_active_elements_only():
    model = build_model("mlp", (4,), 3, seed=0)
    layout = Layout(model)
    trainer = Trainer(model, layout, batch_size=8, seed=0)
    x = tf.constant(np.random.RandomState(0).rand(16, 4).astype(np.float32))
    y = tf.constant(np.arange(16) % 3)
    trainer.train_epoch(x, y, 1e-2, accumulate=True)
    before = trainer.contribution()
    kernel = layout.indices(KERNEL)[0]
    masks = [None] * len(before)
    masks[kernel] = np.zeros(before[kernel].shape, bool)
    masks[kernel][0, :2] = True
    trainer.keep_contribution(masks)
    after = trainer.contribution()
    assert np.array_equal(after[kernel][masks[kernel]], before[kernel][masks[kernel]])
    assert not after[kernel][~masks[kernel]].any()
    other = layout.indices(KERNEL)[1]
    assert np.array_equal(after[other], before[other])


@pytest.mark.parametrize("method", ["dpu", "pruning"])
def test_a_round_selects_within_each_layers_preselected_share(small_mnist, method):
    """A share below k binds: each LeNet layer gives at most int(0.004 n) elements."""
    config = RunConfig(rounds=1, initial_samples=100, epochs=1, batch_size=64, seed=3,
                       method=method, initial_deployment="partial", layer_preselect=0.004)
    record = run(config, progress=None, data=small_mnist).rounds[0]
    assert record["selected_elements"] == int(784 * 300 * 0.004) + int(300 * 100 * 0.004) \
        + int(100 * 10 * 0.004)
