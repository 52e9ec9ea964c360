"""`--rank=per_bit`: rank elements by contribution per bit of the patch that carries them.

A changed element costs the patch its position and its value. Positions are
Rice-coded gaps per buffer: about log2(N_b / n_b) + 1.5 bits each, so an
element in a sparsely updated buffer costs more than one in a dense one.
Values are Rice-coded zigzag deltas of the int8 value: about
1 + log2(|2 d| + 1) bits for a change of d steps, and an element whose int8
value does not change (d = 0) costs nothing and changes nothing on the
device, so it is ranked after every element that does.

The densities depend on the selection, so the ranking is refined twice:
select by contribution, cost each element at the densities that selection
gives, re-rank by score / bits, and again.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

from tf_dpu import selection

_REFINEMENTS = 2


def int8_steps(final: np.ndarray, start: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """How many int8 steps each element moves at the deployed file's frozen scales."""
    return np.rint(final / scale) - np.rint(start / scale)


def element_bits(steps: np.ndarray, buffer_size: int, selected: int) -> np.ndarray:
    """Estimated patch bits of each element of one buffer at `selected` changes."""
    position = np.log2(buffer_size / max(selected, 1)) + 1.5
    value = 1.0 + np.log2(2.0 * np.abs(steps) + 1.0)
    return position + value


def per_bit(scores: Dict[int, np.ndarray], final: Sequence[np.ndarray],
            start: Sequence[np.ndarray], scales: List[Optional[np.ndarray]],
            size: int) -> Dict[int, np.ndarray]:
    """Scores divided by estimated bits; elements that change no int8 value come last.

    Args:
      scores: the DPU metric per weight index (as `selection.top_k` takes it).
      final, start: step 1's weights and the round's start, `model.weights` order.
      scales: per weight, the int8 step of each element in Keras units (None
        for weights the file does not store as int8: they keep their score).
      size: the number of elements the round is expected to select.
    """
    steps = {i: int8_steps(final[i], start[i], scales[i]) for i in scores
             if scales[i] is not None}
    ranked = scores
    length = max(scores) + 1
    for _ in range(_REFINEMENTS):
        masks = selection.top_k(ranked, size, length)
        values = {}
        for i, s in scores.items():
            if i in steps:
                s = s / element_bits(steps[i], s.size, int(masks[i].sum()))
            values[i] = s
        finite = [np.abs(v[np.isfinite(v)]).max(initial=0.0) for v in values.values()]
        shift = 2.0 * max(finite, default=0.0) + 1.0
        # Elements whose int8 value stays put go after all others, in their order.
        ranked = {i: np.where(steps[i] != 0, v, v - shift) if i in steps else v
                  for i, v in values.items()}
    return ranked
