"""What each entry of `model.get_weights()` is, and counting changes between lists.

Methods work on plain lists of numpy arrays in `model.weights` order. The
layout says which entries are kernels (trainable, rank >= 2: the elements DPU
selects from and the budget counts), which are biases (trainable, rank < 2:
biases and BatchNorm gamma/beta) and which are state (non-trainable: BatchNorm
moving statistics).
"""

from typing import List, Sequence

import numpy as np

KERNEL, BIAS, STATE = "kernel", "bias", "state"


class Layout:
    """The kind of every weight of a model, and where the trainable ones sit."""

    def __init__(self, model):
        position = {w.ref(): i for i, w in enumerate(model.weights)}
        trainable = {v.ref() for v in model.trainable_variables}
        self.names = [w.name for w in model.weights]
        self.shapes = [tuple(w.shape) for w in model.weights]
        self.kinds = [
            (KERNEL if len(w.shape) >= 2 else BIAS) if w.ref() in trainable else STATE
            for w in model.weights
        ]
        # Maps model.trainable_variables order onto model.weights order.
        self.trainable_positions = [position[v.ref()] for v in model.trainable_variables]

    def indices(self, *kinds: str) -> List[int]:
        return [i for i, k in enumerate(self.kinds) if k in kinds]

    def size(self, *kinds: str) -> int:
        """Total number of elements of the given kinds."""
        return int(sum(np.prod(self.shapes[i], dtype=np.int64) for i in self.indices(*kinds)))

    @property
    def has_state(self) -> bool:
        return STATE in self.kinds


def count_changed(layout: Layout, new: Sequence[np.ndarray], base: Sequence[np.ndarray],
                  *kinds: str) -> int:
    """Number of elements of the given kinds whose bits differ between two lists."""
    return int(sum(np.count_nonzero(_bits(new[i]) != _bits(base[i]))
                   for i in layout.indices(*kinds)))


def _bits(array):
    # Compare bit patterns, so that -0.0 vs 0.0 counts as a change and NaN
    # equals itself: a device receives bytes, not numbers.
    array = np.ascontiguousarray(array)
    return array.view(np.uint32) if array.dtype == np.float32 else array


def zeros_like(weights: Sequence[np.ndarray]) -> List[np.ndarray]:
    return [np.zeros_like(w) for w in weights]
