"""Kernel steps under a frozen BatchNorm.

After round 0 an exported model's BatchNorm is frozen (`--bias_policy`
frozen or masked): partial rounds train in inference mode, where each
BatchNorm is a fixed per-channel scale f = gamma / sqrt(var + eps) of the
layer before it, the scale the converter folds into the int8 kernel. Adam
moves every element by about the learning rate whatever its gradient's
size, so an element under f = 15 (measured in MobileNet's depthwise layers)
moves 15 times further in the deployed model than the learning rate says,
and with batch statistics gone nothing renormalises it: warm-started
training from a trained MobileNet at 5e-3 fell to chance in one epoch, and
DPU sent nothing for six rounds. The step of such a kernel (and its bias)
is divided by f per output channel where f > 1, so no element moves
further in the deployed file than the learning rate allows.
"""

from typing import List, Optional

import numpy as np


def step_scales(model, weights) -> Optional[List[Optional[np.ndarray]]]:
    """Per `model.weights` entry, what the optimizer's step is multiplied by.

    Args:
      model: the Keras model.
      weights: its weights (model.weights order), BatchNorm as it will stay
        frozen.

    Returns:
      None when no kernel feeds a BatchNorm; else one array broadcastable to
      the weight (kernels and biases before a BatchNorm) or None per entry.
    """
    from tflite_edge.folding import (  # pylint: disable=import-outside-toplevel
        batch_norm_after, kernel_of)
    positions = {w.ref(): i for i, w in enumerate(model.weights)}
    scales: List[Optional[np.ndarray]] = [None] * len(model.weights)
    for layer in model.layers:
        kernel = kernel_of(layer)
        if kernel is None:
            continue
        norm = batch_norm_after(model, layer, positions)
        if norm is None:
            continue
        factor = np.abs(np.asarray(weights[norm.gamma], np.float64)) / np.sqrt(
            np.asarray(weights[norm.variance], np.float64) + norm.epsilon)
        # Steps shrink where the BatchNorm amplifies (f > 1) and are never
        # enlarged where it attenuates: dividing by a small f would send a
        # silenced channel's raw weights far for a change nobody sees.
        scale = np.minimum(1.0, 1.0 / np.maximum(factor, 1e-12)).astype(np.float32)
        shape = tuple(kernel.shape)
        depthwise = kernel is getattr(layer, "depthwise_kernel", None)
        scales[positions[kernel.ref()]] = (scale.reshape(shape[2], shape[3]) if depthwise
                                           else scale)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            scales[positions[bias.ref()]] = scale
    return scales if any(s is not None for s in scales) else None
