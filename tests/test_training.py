import numpy as np
import pytest
import tensorflow as tf

from tf_dpu.models import build_model
from tf_dpu.training import Trainer, learning_rate_at
from tf_dpu.weights import KERNEL, Layout


def _trainer(name="mlp", shape=(28, 28, 1), **kwargs):
    model = build_model(name, shape, 10, seed=0)
    return Trainer(model, Layout(model), **kwargs)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.parametrize("settings", [
    dict(optimizer="adam", learning_rate=1e-3),
    dict(optimizer="sgd", learning_rate=0.05, momentum=0.9),
    dict(optimizer="sgd", learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
    dict(optimizer="adam", learning_rate=1e-3, restore=True),
])
def test_masked_elements_stay_bit_identical(small_mnist, settings):
    """Masked elements get zero moments (an exact zero increment) or, for an optimizer
    whose slots are not known, are restored after every step."""
    settings = dict(settings)
    restore = settings.pop("restore", False)
    trainer = _trainer(**settings)
    if restore:
        trainer._slots = None   # pylint: disable=protected-access
    x, y = tf.constant(small_mnist.x_train), tf.constant(small_mnist.y_train)
    # Unmasked epochs first, so the optimizer carries momentum into the masked
    # epochs: masking only the gradient would still move the frozen elements.
    trainer.train_epoch(x, y, settings["learning_rate"])
    before = trainer.model.get_weights()
    rng = np.random.RandomState(0)
    masks = [rng.rand(*w.shape) < 0.05 for w in before]
    trainer.set_masks(masks)
    for _ in range(3):
        trainer.train_epoch(x, y, settings["learning_rate"], masked=True)
    after = trainer.model.get_weights()
    moved = 0
    for b, a, m in zip(before, after, masks):
        assert np.array_equal(_bits(b)[~m], _bits(a)[~m])
        moved += np.count_nonzero(_bits(b)[m] != _bits(a)[m])
    assert moved > 0.5 * sum(m.sum() for m in masks)


def test_without_mask_every_kernel_moves(small_mnist):
    trainer = _trainer(optimizer="sgd", learning_rate=0.05, momentum=0.9)
    before = trainer.model.get_weights()
    trainer.train_epoch(tf.constant(small_mnist.x_train), tf.constant(small_mnist.y_train), 0.05)
    after = trainer.model.get_weights()
    for i in trainer.layout.indices(KERNEL):
        assert np.count_nonzero(before[i] != after[i]) > 0.9 * before[i].size


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.02), ("adam", 2e-4)])
def test_local_contribution_sum_tracks_the_loss_decrease(small_mnist, optimizer, lr):
    """Σ_i c_loc_i = -Σ_t g_t·Δw_t is the first-order loss decrease: with
    full-batch steps it must match L(w_start) - L(w_end) within 5 %."""
    n = 400
    trainer = _trainer(optimizer=optimizer, learning_rate=lr, momentum=0.0, batch_size=n)
    x, y = tf.constant(small_mnist.x_train[:n]), tf.constant(small_mnist.y_train[:n])
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    start_loss = float(loss(y, trainer.model(x, training=False)))
    trainer.reset_contribution()
    for _ in range(40):
        trainer.train_epoch(x, y, lr, accumulate=True)
    end_loss = float(loss(y, trainer.model(x, training=False)))
    total = sum(float(c.sum()) for c in trainer.contribution() if c is not None)
    decrease = start_loss - end_loss
    assert decrease > 0.3
    assert total == pytest.approx(decrease, rel=0.05)


def test_contribution_counts_only_what_moved_under_a_mask(small_mnist):
    trainer = _trainer()
    weights = trainer.model.get_weights()
    masks = [np.zeros(w.shape, bool) for w in weights]
    masks[0][:10, :10] = True
    trainer.set_masks(masks)
    trainer.reset_contribution()
    trainer.train_epoch(tf.constant(small_mnist.x_train), tf.constant(small_mnist.y_train),
                        1e-3, masked=True, accumulate=True)
    c = trainer.contribution()
    assert np.count_nonzero(c[0][~masks[0]]) == 0
    assert np.count_nonzero(c[0][masks[0]]) > 50


def test_reset_optimizer_restarts_from_a_fresh_state(small_mnist):
    x, y = tf.constant(small_mnist.x_train), tf.constant(small_mnist.y_train)
    a, b = _trainer(seed=3), _trainer(seed=3)
    start = a.model.get_weights()
    a.train_epoch(x, y, 1e-3)          # leaves Adam moments behind
    a.model.set_weights(start)
    a.reset_optimizer()
    a._rng = np.random.RandomState(3)   # same shuffling as b's first epoch
    a.train_epoch(x, y, 1e-3)
    b.train_epoch(x, y, 1e-3)
    assert all(np.array_equal(p, q) for p, q in zip(a.model.get_weights(), b.model.get_weights()))


def test_learning_rate_schedules():
    # The product's default: two decays, at a third and two thirds, whatever the count.
    assert [learning_rate_at("thirds", 1.0, e, 10) for e in range(10)] == pytest.approx(
        [1] * 4 + [0.1] * 3 + [0.01] * 3)
    assert [learning_rate_at("thirds", 1.0, e, 5) for e in range(5)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])
    assert [learning_rate_at("thirds", 1.0, e, 30) for e in range(30)] == pytest.approx(
        [learning_rate_at("step", 1.0, e, 30) for e in range(30)])
    for epochs in range(1, 40):
        rates = [learning_rate_at("thirds", 1.0, e, epochs, 0.2) for e in range(epochs)]
        assert rates[0] == 1.0 and min(rates) == pytest.approx(0.04 if epochs >= 3 else
                                                               rates[-1])
        assert rates == sorted(rates, reverse=True)
        # Each level holds at least a third of the epochs (rounded down).
        assert rates.count(1.0) >= epochs // 3
    # The reference's StepLR decays four times in five epochs, which the default avoids.
    assert learning_rate_at("step", 1.0, 4, 5) == pytest.approx(1e-4)
    assert [learning_rate_at("step", 1.0, e, 30) for e in (0, 9, 10, 19, 20, 29)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    # PyTorch's StepLR(step_size=epochs // 3): 10 epochs run 3/3/3/1, 20 run 6/6/6/2.
    assert [learning_rate_at("step", 1.0, e, 10) for e in range(10)] == pytest.approx(
        [1] * 3 + [0.1] * 3 + [0.01] * 3 + [0.001])
    assert [learning_rate_at("step", 1.0, e, 20, 0.2) for e in (5, 6, 17, 18, 19)] == \
        pytest.approx([1, 0.2, 0.04, 0.008, 0.008])
    assert learning_rate_at("step", 1.0, 1, 2) == pytest.approx(0.1)   # epochs // 3 == 0
    assert learning_rate_at("cosine", 2.0, 0, 10) == 2.0
    assert learning_rate_at("cosine", 2.0, 5, 10) == pytest.approx(1.0)
    assert learning_rate_at("constant", 0.3, 7, 10) == 0.3


def test_adam_is_pytorchs_adam_where_epsilon_matters():
    """Tiny gradients, as from a trained model: Keras' epsilon placement would halve the steps."""
    from tf_dpu.training import make_optimizer  # pylint: disable=import-outside-toplevel
    lr, eps, b1, b2 = 1e-3, 1e-8, 0.9, 0.999
    grads = [np.array([3e-9, -2e-8, 5e-7], np.float32) * (t + 1) for t in range(5)]
    variable = tf.Variable(np.zeros(3, np.float32))
    optimizer = make_optimizer("adam", lr, 0.0, eps)
    w, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        optimizer.apply_gradients([(tf.constant(g), variable)])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g.astype(np.float64) ** 2
        w -= lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(variable.numpy(), w, rtol=1e-4)
