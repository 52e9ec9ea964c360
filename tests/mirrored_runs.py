"""Runs every method with and without a two-device MirroredStrategy.

A separate process, because the CPU can be split into logical devices only
before TensorFlow starts (the test process has started it long ago).
"""

import json
import os
import sys

import numpy as np

import tf_dpu  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from tf_dpu import RunConfig, distribute
from tf_dpu.config import METHODS
from tf_dpu.data import load_dataset
from tf_dpu.models import build_model
from tf_dpu.rounds import run
from tf_dpu.training import Trainer
from tf_dpu.weights import Layout

# Split the CPU first: nothing else may have touched TensorFlow's devices yet.
MIRRORED = distribute.make_strategy("mirrored", logical_cpus=2)


def replica_check(data):
    """One unmasked and two masked epochs with contributions, on two replicas."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with MIRRORED.scope():
        model = build_model("mlp", data.input_shape, data.num_classes, seed=3)
        trainer = Trainer(model, Layout(model), batch_size=50, seed=3, strategy=MIRRORED,
                          optimizer="sgd", learning_rate=0.05, weight_decay=1e-3)
    x, y = tf.constant(data.x_train[:301]), tf.constant(data.y_train[:301])
    trainer.train_epoch(x, y, 0.05, accumulate=True)
    before = [np.stack([c.numpy() for c in v.values]) for v in model.trainable_variables]
    rng = np.random.RandomState(0)
    masks = [rng.rand(*w.shape) < 0.05 for w in model.get_weights()]
    trainer.set_masks(masks)
    for _ in range(2):
        trainer.train_epoch(x, y, 0.05, masked=True, accumulate=True)
    after = [np.stack([c.numpy() for c in v.values]) for v in model.trainable_variables]
    contribution = [np.stack([c.numpy() for c in v.values]) for v in trainer._contribution]  # pylint: disable=protected-access
    frozen_moved = sum(int(np.count_nonzero(b.view(np.uint32)[:, ~m] != a.view(np.uint32)[:, ~m]))
                       for b, a, m in zip(before, after, masks))
    free_moved = sum(int(np.count_nonzero(b[:, m] != a[:, m])) for b, a, m in
                     zip(before, after, masks))
    return {
        "replicas": len(model.trainable_variables[0].values),
        "weights_identical": all(np.array_equal(w[0].view(np.uint32), w[1].view(np.uint32))
                                 for w in after),
        "contribution_identical": all(np.array_equal(c[0], c[1]) for c in contribution),
        "frozen_elements_moved": frozen_moved,
        "free_elements_moved": free_moved,
    }


def batchnorm_check(data):
    """A ResNet's BatchNorm under two replicas, with a one-sample tail batch."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    with MIRRORED.scope():
        model = build_model("resnet8", data.input_shape, data.num_classes, seed=3)
        trainer = Trainer(model, Layout(model), batch_size=50, seed=3, strategy=MIRRORED)
    x, y = tf.constant(data.x_train[:301]), tf.constant(data.y_train[:301])
    losses = [trainer.train_epoch(x, y, 5e-3) for _ in range(3)]
    copies = [[c.numpy() for c in v.values] for v in model.trainable_weights]
    # Keras keeps BatchNorm's moving statistics per replica (synchronised on
    # read: get_weights() and inference see their mean).
    moving = [v for v in model.weights if "moving" in v.name]
    return {
        "losses": losses,
        "finite": all(np.isfinite(w).all() for w in model.get_weights()),
        "replicas_identical": all(np.array_equal(a, b) for a, b in copies),
        "moving_statistics": len(moving),
        "moving_read_as_mean": all(
            np.allclose(v.numpy(), np.mean([c.numpy() for c in v.values], axis=0), atol=1e-6)
            for v in moving),
    }


def contribution_check(data):
    """Step 1 (two epochs with contributions) from the same weights, on one and two devices."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tf_dpu.selection import top_k  # pylint: disable=import-outside-toplevel
    x, y = tf.constant(data.x_train[:400]), tf.constant(data.y_train[:400])
    found = {}
    for name, strategy in (("one", tf.distribute.get_strategy()), ("two", MIRRORED)):
        with strategy.scope():
            model = build_model("mlp", data.input_shape, data.num_classes, seed=5)
            trainer = Trainer(model, Layout(model), batch_size=64, seed=5, strategy=strategy)
        for epoch in range(2):
            trainer.train_epoch(x, y, 5e-3, accumulate=True)
        contribution = trainer.contribution()
        scores = {i: c for i, c in enumerate(contribution) if c is not None and c.ndim == 2}
        budget = int(0.01 * sum(c.size for c in scores.values()))
        found[name] = (contribution, top_k(scores, budget, len(contribution)), budget)
    (c1, m1, budget), (c2, m2, _) = found["one"], found["two"]
    pairs = [(a, b) for a, b in zip(c1, c2) if a is not None]
    common = sum(int(np.count_nonzero(a & b)) for a, b in zip(m1, m2) if a is not None)
    return {
        "budget": budget,
        "selected": [sum(int(np.count_nonzero(m)) for m in masks if m is not None)
                     for masks in (m1, m2)],
        "common": common,
        "contribution_relative_error": float(
            max(np.abs(a - b).max() for a, b in pairs) / max(np.abs(a).max() for a, _ in pairs)),
    }


def main(out):
    """Writes out/replica_check.json and one run folder per method and strategy."""
    data = load_dataset("digits", 100, seed=0)
    with open(os.path.join(out, "replica_check.json"), "w") as f:
        json.dump(replica_check(data), f)
    with open(os.path.join(out, "batchnorm_check.json"), "w") as f:
        json.dump(batchnorm_check(data), f)
    with open(os.path.join(out, "contribution_check.json"), "w") as f:
        json.dump(contribution_check(data), f)
    for method in METHODS:
        for strategy in ("default", "mirrored"):
            config = RunConfig(dataset="digits", model="mlp", method=method, rounds=3,
                               initial_samples=300, samples_per_round=200, epochs=2,
                               batch_size=64, seed=2, strategy=strategy,
                               logical_cpus=2 if strategy == "mirrored" else 0,
                               out_dir=os.path.join(out, method, strategy))
            run(config, progress=None, data=data)



if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main(sys.argv[1])
