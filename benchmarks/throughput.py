"""Training throughput of the custom loop against `model.fit`, side by side.

Each repetition times one epoch of `model.fit` and one epoch of each loop
variant on the same model architecture, data and batch size, in turn, so
that machine noise hits all of them alike; the ratios use the medians.
A ratio above 1 means the loop is faster than `model.fit`.
"""

import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_dpu.models import build_model
from tf_dpu.training import Trainer
from tf_dpu.weights import Layout


def _median_seconds(fn, samples):
    return float(np.median(samples[fn]))


def measure(data, model_name: str = "mlp", repeats: int = 5, batch_size: int = 128,
            update_ratio: float = 0.01) -> dict:
    """Returns `train_step_vs_fit`, `contribution_step_vs_fit`, `masked_step_vs_fit`.

    Args:
      data: a `tf_dpu.data.Dataset`; its whole training pool is one epoch.
      model_name: the model to time.
      repeats: timed epochs per variant (after one warm-up epoch each).
      batch_size: samples per step, for both.
      update_ratio: density of the random mask of the masked variant.
    """
    tf.random.set_seed(0)
    x_np, y_np = data.x_train, data.y_train
    fit_model = build_model(model_name, data.input_shape, data.num_classes, seed=0)
    fit_model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model = build_model(model_name, data.input_shape, data.num_classes, seed=0)
    trainer = Trainer(model, Layout(model), learning_rate=1e-3, batch_size=batch_size)
    rng = np.random.RandomState(0)
    trainer.set_masks([rng.rand(*w.shape) < update_ratio for w in model.get_weights()])
    x, y = tf.constant(x_np), tf.constant(y_np)
    variants = {
        "fit": lambda: fit_model.fit(x_np, y_np, batch_size=batch_size, epochs=1,
                                     shuffle=True, verbose=0),
        "plain": lambda: trainer.train_epoch(x, y, 1e-3),
        "contribution": lambda: trainer.train_epoch(x, y, 1e-3, accumulate=True),
        "masked": lambda: trainer.train_epoch(x, y, 1e-3, masked=True),
    }
    samples = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: tracing and first-call costs
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    fit = _median_seconds("fit", samples)
    steps = int(np.ceil(len(x_np) / batch_size))
    return {
        "train_step_vs_fit": round(fit / _median_seconds("plain", samples), 3),
        "contribution_step_vs_fit": round(fit / _median_seconds("contribution", samples), 3),
        "masked_step_vs_fit": round(fit / _median_seconds("masked", samples), 3),
        "throughput_model": model_name,
        "throughput_samples_per_epoch": len(x_np),
        "throughput_steps_per_epoch": steps,
        "fit_ms_per_step": round(1000 * fit / steps, 3),
        "loop_ms_per_step": round(1000 * _median_seconds("plain", samples) / steps, 3),
    }
