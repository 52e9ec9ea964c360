"""The one custom training loop that every method and every step runs through.

A whole epoch is one `tf.function` call: a graph loop over the batches of a
shuffled index vector, so Python is not on the per-step path. Two optional
features are compiled in per variant:

* a mask: the optimizer's *increment* is masked, not just the gradient.
  Masking only the gradient is not enough because Adam's and momentum's state
  would still move the frozen elements; here they are restored to their
  pre-step bits with `tf.where`, so masked elements stay bit-identical.
* a local-contribution accumulator: c_i += -g_i * dw_i per step, where dw is
  the increment the optimizer actually applied (preconditioned, masked) and g
  the gradient including weight decay.

The loop runs under any `tf.distribute` strategy (see `tf_dpu.distribute`):
the batch loop stays in cross-replica context and each step is one
`strategy.run`, so every replica takes the same global batches in the same
order as a single device would.
"""

import math
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_dpu import distribute
from tf_dpu.weights import Layout

_EVAL_BATCH = 1024


def learning_rate_at(schedule: str, base: float, epoch: int, epochs: int,
                     gamma: float = 0.1) -> float:
    """Learning rate of `epoch` (0-based) within a step of `epochs` epochs.

    `thirds` multiplies by gamma at one third and at two thirds of the
    epochs (10 epochs run 4/3/3, 5 run 2/2/1, 30 run 10/10/10): never more
    than two decays, whatever the epoch count. `step` is the reference's
    PyTorch `StepLR(step_size=epochs // 3, gamma)`: x gamma every
    `epochs // 3` epochs, so 30 run 10/10/10 and 10 run 3/3/3/1, but 5 run
    1/1/1/1/1 and fall to gamma^4 (why it is kept for the reference's flag
    files only). `cosine` anneals to zero, `constant` keeps `base`. Each
    step restarts the schedule.
    """
    if schedule == "thirds":
        return base * gamma ** (3 * epoch // epochs)   # 0, 1 or 2: epoch < epochs
    if schedule == "step":
        return base * gamma ** (epoch // max(1, epochs // 3))
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base


def _slots_of(optimizer, variables) -> Optional[List[List[tf.Variable]]]:
    """Each variable's optimizer slots (Adam's m and v, SGD's momentum), or None.

    Slots are named `<slot>/<variable name>`; None when any variable does not
    have exactly the slots the optimizer keeps, so that masking falls back
    to restoring masked elements instead of trusting a wrong match.
    """
    # Plain SGD may keep an unused momentum slot; zeroing it is harmless.
    expected = {"Adam": (2,), "SGD": (1,) if getattr(optimizer, "momentum", 0) else (0, 1)}.get(
        type(optimizer).__name__)
    if expected is None:
        return None
    slots = []
    for variable in variables:
        own = [s for s in optimizer.variables
               if "/" in s.name and s.name.split("/", 1)[1] == variable.name
               and s.shape == variable.shape]
        if len(own) not in expected:
            return None
        slots.append(own)
    return slots


def _any_count(t: tf.Tensor) -> tf.TensorSpec:
    """The spec of `t` with any number of samples (first dimension)."""
    return tf.TensorSpec([None, *t.shape[1:]], t.dtype)


def make_optimizer(name: str, learning_rate: float, momentum: float,
                   epsilon: float = 1e-8):
    """Adam as PyTorch computes it, or SGD with Nesterov momentum when momentum > 0.

    Keras adds epsilon to sqrt(v) before the bias correction, PyTorch after
    it; `adaptive_epsilon` scales it by sqrt(1 - beta2^t), which gives
    PyTorch's update exactly: lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps),
    the reference's optimizer (its partial-update Adam masks this increment).
    """
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, epsilon=epsilon, adaptive_epsilon=True)
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=momentum > 0)


class Trainer:
    """Trains a Keras model with optional masks and contribution accumulation.

    The optimizer, the masks and the accumulators live as long as the trainer,
    so the compiled epoch functions are traced once per variant and reused by
    every round (rounds reset the optimizer's state instead of replacing it).

    Args:
      model: the Keras model; its trainable variables are trained in place.
      layout: the model's `weights.Layout`.
      optimizer: `adam` or `sgd` (Nesterov momentum when momentum > 0).
      learning_rate, momentum: optimizer settings; the rate is set per epoch.
      weight_decay: L2 coefficient added to every trainable gradient (as
        PyTorch's `weight_decay`), so it enters the local contribution too.
      batch_size: samples per step; the last batch of an epoch may be smaller.
      seed: seeds the per-epoch shuffling.
      strategy: the `tf.distribute` strategy whose scope built the model
        (None: the current one, which is the default strategy outside any
        scope). Each global batch is split across its replicas.
      adam_epsilon: Adam's epsilon, in PyTorch's formulation.
      augment: None, or `f(batch, key) -> batch` applied to every training
        batch with a stateless random key [seed, step number] (see
        `tf_dpu.augment`).
    """

    def __init__(self, model: keras.Model, layout: Layout, *, optimizer: str = "adam",
                 learning_rate: float = 5e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, batch_size: int = 128, seed: int = 0,
                 strategy: Optional[tf.distribute.Strategy] = None,
                 adam_epsilon: float = 1e-8, augment=None):
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self._forward = model
        self.layout = layout
        self.batch_size = batch_size
        self._variables = model.trainable_variables
        self._weight_decay = float(weight_decay)
        with self.strategy.scope():
            self._optimizer = make_optimizer(optimizer, learning_rate, momentum, adam_epsilon)
            self._optimizer.build(self._variables)
            self._slots = _slots_of(self._optimizer, self._variables)
            self._masks = [tf.Variable(tf.ones(v.shape, tf.bool), trainable=False)
                           for v in self._variables]
            self._contribution = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
                                  for v in self._variables]
            # Steps taken over the trainer's life: the augmentation's random key.
            self._steps_taken = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._augment = augment
        self._seed = int(seed)
        self._bounds = None
        self._step_scales = None
        # Per-sample losses: a replica sums its slice and divides by the
        # global batch size, so the sum over replicas is the batch mean.
        self._loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.NONE)
        self._rng = np.random.RandomState(seed)
        self._epoch_fns = {}
        self._correct_fns = {}

    # -- state ----------------------------------------------------------------

    def reset_optimizer(self) -> None:
        """Zeroes the optimizer's moments and step counter (a fresh optimizer)."""
        for v in self._optimizer.variables:
            v.assign(tf.zeros_like(v))

    def set_masks(self, masks: Optional[Sequence[Optional[np.ndarray]]]) -> None:
        """Sets which elements may move, in `model.weights` order.

        Args:
          masks: one boolean array (True = may change) or None (all may
            change) per weight; None for no mask at all. Entries of
            non-trainable weights are ignored.
        """
        for i, (variable, position) in enumerate(zip(self._masks,
                                                     self.layout.trainable_positions)):
            mask = None if masks is None else masks[position]
            variable.assign(np.ones(variable.shape, bool) if mask is None else mask)
            if mask is not None and self._slots is not None:
                # A masked element gets a zero gradient; with zero moments too,
                # the optimizer's increment for it is exactly 0 (0 / (0 + eps),
                # or 0 x momentum), so it keeps its bits without being restored
                # after every step. Active elements keep their state.
                for slot in self._slots[i]:
                    slot.assign(tf.where(mask, slot, tf.zeros_like(slot)))

    def set_forward(self, forward: Optional[keras.Model]) -> None:
        """Trains and evaluates through `forward` (sharing the model's variables).

        Quantization-aware rounds pass a model that fake-quantizes weights and
        activations with the deployed int8 parameters; None returns to the
        plain model.
        """
        self._forward = forward or self.model
        self._epoch_fns.clear()
        self._correct_fns.clear()

    def set_bounds(self, bounds: Optional[Sequence[Optional[np.ndarray]]]) -> None:
        """Keeps weights within ±bound after every step (None: unbounded).

        Used after an int8 deployment: the bounds are 127 x the frozen scale
        of each channel, so the server trains only models the device can
        represent without clipping.

        Args:
          bounds: per `model.weights` entry, an array of magnitude limits or None.
        """
        if bounds is None:
            self._bounds = None
            return
        self._bounds = []
        for variable, position in zip(self._variables, self.layout.trainable_positions):
            limit = bounds[position]
            self._bounds.append(None if limit is None else tf.constant(limit, variable.dtype))
        self._epoch_fns.clear()  # the bound constants are compiled into the step

    def set_step_scales(self, scales: Optional[Sequence[Optional[np.ndarray]]]) -> None:
        """Multiplies the optimizer's step per element when BatchNorm is frozen.

        Applies to epochs run with `bn_training=False` only (see
        `tf_dpu.frozen_bn`); steps that train BatchNorm are left as they are.

        Args:
          scales: per `model.weights` entry, an array broadcastable to the
            weight or None (unscaled); None for no scaling at all.
        """
        if scales is None:
            if self._step_scales is not None:
                self._step_scales = None
                self._epoch_fns.clear()
            return
        wanted = [None if scales[p] is None else
                  np.broadcast_to(np.asarray(scales[p], v.dtype.as_numpy_dtype), v.shape)
                  for v, p in zip(self._variables, self.layout.trainable_positions)]
        same = self._step_scales is not None and all(
            (a is None) == (w is None) for a, w in zip(self._step_scales, wanted))
        if same:
            # Variables, so a new round's scales need no new trace.
            for variable, value in zip(self._step_scales, wanted):
                if variable is not None:
                    variable.assign(value)
            return
        with self.strategy.scope():
            self._step_scales = [None if w is None else tf.Variable(w, trainable=False)
                                 for w in wanted]
        self._epoch_fns.clear()

    def state(self) -> List[np.ndarray]:
        """Everything training depends on: weights, optimizer, accumulators, masks."""
        variables = (list(self.model.weights) + list(self._optimizer.variables)
                     + self._contribution + self._masks + [self._steps_taken])
        return [v.numpy() for v in variables] + [np.array(self._optimizer.learning_rate.numpy())]

    def restore(self, state: Sequence[np.ndarray]) -> None:
        """Puts back what `state()` returned (same model and optimizer)."""
        variables = (list(self.model.weights) + list(self._optimizer.variables)
                     + self._contribution + self._masks + [self._steps_taken])
        if len(state) != len(variables) + 1:
            raise ValueError("checkpoint does not match this model")
        for v, value in zip(variables, state):
            v.assign(value)
        self._optimizer.learning_rate = float(state[-1])

    @property
    def shuffle_state(self):
        """The epoch-shuffling RNG's state (saved with each round, for resuming)."""
        return self._rng.get_state()

    @shuffle_state.setter
    def shuffle_state(self, state) -> None:
        self._rng.set_state(state)

    def reset_contribution(self) -> None:
        for c in self._contribution:
            c.assign(tf.zeros_like(c))

    def keep_contribution(self, masks: Sequence[Optional[np.ndarray]]) -> None:
        """Zeroes the accumulated contribution outside `masks` (`model.weights` order).

        None keeps a weight's whole contribution.
        """
        for c, position in zip(self._contribution, self.layout.trainable_positions):
            if masks[position] is not None:
                c.assign(tf.where(masks[position], c, tf.zeros_like(c)))

    def contribution(self) -> List[Optional[np.ndarray]]:
        """The accumulated local contribution, in `model.weights` order.

        Non-trainable weights get None.
        """
        out: List[Optional[np.ndarray]] = [None] * len(self.layout.kinds)
        for c, position in zip(self._contribution, self.layout.trainable_positions):
            out[position] = c.numpy()
        return out

    # -- training and evaluation -----------------------------------------------

    def train_epoch(self, x: tf.Tensor, y: tf.Tensor, learning_rate: float, *,
                    masked: bool = False, accumulate: bool = False,
                    bn_training: bool = True, validation=None):
        """Runs one shuffled epoch and returns its mean training loss.

        Args:
          x, y: the round's training set as tensors.
          learning_rate: this epoch's rate.
          masked: apply the masks set with `set_masks`.
          accumulate: add this epoch's local contribution to the accumulator.
          bn_training: run BatchNorm in training mode (batch statistics and
            moving-average updates); False freezes its moving statistics.
          validation: optional (x_val, y_val), evaluated after the epoch in the
            same graph call (one call per epoch instead of two).

        Returns:
          The epoch's mean training loss; with `validation`, (loss, accuracy).
        """
        self._optimizer.learning_rate = learning_rate
        order = tf.constant(self._rng.permutation(int(x.shape[0])).astype(np.int32))
        key = (bool(masked), bool(accumulate), bool(bn_training), validation is not None)
        if key not in self._epoch_fns:
            # The training set grows every round: a signature with any number
            # of samples traces each variant once, not once per round.
            signature = [_any_count(x), _any_count(y), tf.TensorSpec([None], tf.int32)]
            if validation is None:
                self._epoch_fns[key] = tf.function(
                    lambda a, b, o: self._epoch(a, b, o, *key[:3]), input_signature=signature)
            else:
                self._epoch_fns[key] = tf.function(
                    lambda a, b, o, c, d: (self._epoch(a, b, o, *key[:3]), self._correct(c, d)),
                    input_signature=signature + [_any_count(t) for t in validation])
        if validation is None:
            return float(self._epoch_fns[key](x, y, order))
        loss, correct = self._epoch_fns[key](x, y, order, *validation)
        return float(loss), float(np.mean(correct.numpy()))

    def accuracy(self, x: tf.Tensor, y: tf.Tensor) -> float:
        """Top-1 accuracy of the model's current weights (inference mode)."""
        return float(np.mean(self.correct(x, y)))

    def correct(self, x: tf.Tensor, y: tf.Tensor) -> np.ndarray:
        """Per sample, whether the model's current weights classify it correctly."""
        key = (tuple(x.shape[1:]), x.dtype, y.dtype)
        if key not in self._correct_fns:
            self._correct_fns[key] = tf.function(
                self._correct, input_signature=[_any_count(x), _any_count(y)])
        return self._correct_fns[key](x, y).numpy()

    def _epoch(self, x, y, order, masked, accumulate, bn_training):
        batch = self.batch_size
        n = tf.shape(order)[0]
        # A last batch with fewer samples than replicas would leave a replica
        # with nothing, and BatchNorm's statistics of nothing are NaN; such a
        # tail (fewer than the replica count) is skipped. One replica never skips.
        steps = n // batch + tf.cast(n % batch >= self.strategy.num_replicas_in_sync, tf.int32)
        total = tf.constant(0.0)
        used = tf.constant(0)
        first = self._steps_taken.read_value()
        for i in tf.range(steps):
            index = order[i * batch:tf.minimum((i + 1) * batch, n)]
            key = tf.stack([tf.constant(self._seed, tf.int64), first + tf.cast(i, tf.int64)])
            loss = self.strategy.run(self._step, args=(
                tf.gather(x, index), tf.gather(y, index), key, masked, accumulate, bn_training))
            size = tf.shape(index)[0]
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None) * \
                tf.cast(size, tf.float32)
            used += size
        self._steps_taken.assign_add(tf.cast(steps, tf.int64))
        return total / tf.cast(used, tf.float32)

    def _step(self, xb, yb, key, masked, accumulate, bn_training):
        if self._augment is not None:
            # On the global batch, before the replica's slice: every replica
            # draws the same crops for the same samples.
            xb = self._augment(xb, key)
        size = tf.shape(yb)[0]
        start, end = distribute.replica_slice(size)
        with tf.GradientTape() as tape:
            losses = self._loss(yb[start:end], self._forward(xb[start:end], training=bn_training))
            loss = tf.reduce_sum(losses) / tf.cast(size, losses.dtype)
        grads = tape.gradient(loss, self._variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self._variables)]
        # From here on every replica holds the same gradient and does the same
        # arithmetic, so masks, contributions and weights agree everywhere.
        grads = distribute.sum_over_replicas(grads)
        if self._weight_decay:
            grads = [g + self._weight_decay * v for g, v in zip(grads, self._variables)]
        if masked:
            grads = [tf.where(m, g, tf.zeros_like(g)) for g, m in zip(grads, self._masks)]
        # Without zeroed optimizer slots (an optimizer whose slots were not
        # found), masked elements are restored to their pre-step bits.
        restore = masked and self._slots is None
        scaled = self._step_scales is not None and not bn_training
        before = [tf.identity(v) for v in self._variables] \
            if accumulate or restore or scaled else []
        self._optimizer.apply_gradients(zip(grads, self._variables),
                                        skip_gradients_aggregation=True)
        changed = restore or scaled or self._bounds is not None
        after = [tf.identity(v) for v in self._variables] if before or changed else []
        if scaled:
            after = [a if s is None else b + s * (a - b)
                     for a, b, s in zip(after, before, self._step_scales)]
        if restore:
            after = [tf.where(m, a, b) for m, a, b in zip(self._masks, after, before)]
        if self._bounds is not None:
            after = [a if limit is None else tf.clip_by_value(a, -limit, limit)
                     for a, limit in zip(after, self._bounds)]
        updates = list(zip(self._variables, after)) if changed else []
        if accumulate:
            updates += [(c, c - g * (a - b)) for c, g, a, b in
                        zip(self._contribution, grads, after, before)]
        if updates:
            distribute.assign(updates)
        return loss

    def _correct(self, x, y):
        n = tf.shape(x)[0]
        out = tf.TensorArray(tf.bool, size=0, dynamic_size=True, infer_shape=False)
        for i in tf.range((n + _EVAL_BATCH - 1) // _EVAL_BATCH):
            logits = self._forward(x[i * _EVAL_BATCH:(i + 1) * _EVAL_BATCH], training=False)
            predicted = tf.argmax(logits, axis=-1, output_type=y.dtype)
            out = out.write(i, predicted == y[i * _EVAL_BATCH:(i + 1) * _EVAL_BATCH])
        return out.concat()
