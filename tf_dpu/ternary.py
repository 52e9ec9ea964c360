"""Sparse ternary compression of a round's change (the `--method=stc` baseline).

Sparse ternary compression (Sattler et al., 2019) sends, per layer, the
positions of the top-k of |change| and one magnitude μ: every sent element
moves by ±μ. It is the federated-learning reference for cheap updates, so
the product is measured against it on the same rounds and the same patch
format.

On an exported model the magnitude is counted in the deployed file's int8
steps (per layer, at least one step): the device then receives exactly
start ± μ steps, the values cost the patch almost nothing, and the server's
model is bit for bit what the device holds. Without a file the magnitude is
the mean |change| in Keras units.
"""

from typing import List, Optional, Sequence

import numpy as np

from tf_dpu import selection

Weights = List[np.ndarray]


def steps_of(change: np.ndarray, scale: Optional[np.ndarray]) -> np.ndarray:
    """|change| in the units that are sent: int8 steps when the file has a scale."""
    return np.abs(change) if scale is None else np.abs(change / scale)


def select(final: Sequence[np.ndarray], start: Sequence[np.ndarray], indices: Sequence[int],
           scales: Optional[Sequence[Optional[np.ndarray]]], ratio: float,
           budget: int) -> selection.Masks:
    """Each layer's top `ratio` of |final - start| (at most `budget` in all)."""
    scores = {i: steps_of(final[i] - start[i], None if scales is None else scales[i])
              for i in indices}
    return selection.top_per_layer(scores, ratio, budget, len(final))


def ternarize(final: Sequence[np.ndarray], start: Sequence[np.ndarray],
              masks: selection.Masks,
              scales: Optional[Sequence[Optional[np.ndarray]]]) -> Weights:
    """start, with each selected element moved by ±μ of its layer towards `final`.

    Args:
      final: the full model trained from `start` (`model.weights` order).
      start: the deployed model.
      masks: the selected elements (None: the weight is left as in `final`;
        the caller's bias policy decides what happens to it).
      scales: per weight, the deployed file's int8 step in Keras units (None
        for the list or an entry: no file, μ in Keras units).

    Returns:
      The ternary model. With a scale, a selected element becomes
      clip(q + sign * μ, -127, 127) * scale, q its int8 value in the file:
      exactly an int8 value, so the export writes q ± μ.
    """
    out = []
    for i, (f, s) in enumerate(zip(final, start)):
        mask = masks[i]
        if mask is None:
            out.append(np.array(f, copy=True))
            continue
        change = f - s
        sign = np.sign(change)
        chosen = mask & (sign != 0)
        scale = None if scales is None else scales[i]
        if not chosen.any():
            out.append(np.array(s, copy=True))
            continue
        if scale is None:
            mu = float(np.mean(np.abs(change[chosen])))
            moved = s + sign * mu
        else:
            scale = np.broadcast_to(scale, s.shape)
            mu = max(1.0, float(np.rint(np.mean(np.abs(change[chosen] / scale[chosen])))))
            q = np.clip(np.rint(s / scale) + sign * mu, -127, 127)
            moved = q * scale
        out.append(np.where(chosen, moved, s).astype(s.dtype))
    return out
