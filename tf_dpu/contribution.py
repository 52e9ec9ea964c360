"""The DPU metric: local and global contributions, normalised and mixed.

Under an L-smooth loss, the loss gap between a partial and the full update is
bounded by a sum over the *non-updated* elements of a first-order term (their
share of the loss decrease along the training trajectory: the local
contribution) and a second-order term proportional to their squared net change
(the global contribution). Keeping the elements with the largest mix of both
minimises the bound under the budget.
"""

from typing import Callable, Dict, Optional, Sequence

import numpy as np


def global_contribution(final: Sequence[np.ndarray], start: Sequence[np.ndarray],
                        indices: Sequence[int]) -> Dict[int, np.ndarray]:
    """c_glob = (w_final - w_start)^2 for the weights at `indices`."""
    return {i: np.square(final[i].astype(np.float64) - start[i]) for i in indices}


def normalise(contribution: Dict[int, np.ndarray]) -> Optional[Dict[int, np.ndarray]]:
    """Divides by the sum over all given weights, so both terms weigh alike.

    Returns None when the sum is not positive or not finite (nothing moved,
    or a run that only increased the loss): dividing by it would flip or
    erase the ranking, and zeros would hand the budget to the first
    positions of the first layer.
    """
    total = float(sum(np.sum(c, dtype=np.float64) for c in contribution.values()))
    if not total > 0 or not np.isfinite(total):
        return None
    return {i: c.astype(np.float64) / total for i, c in contribution.items()}


def mix(global_term: Dict[int, np.ndarray], local_term: Dict[int, np.ndarray],
        mix_ratio: float, warn: Optional[Callable[[str], None]] = None
        ) -> Dict[int, np.ndarray]:
    """s = λ * c_glob / Σ c_glob + (1 - λ) * c_loc / Σ c_loc, λ = `mix_ratio`.

    A term that cannot be normalised (see `normalise`) is left out and the
    other one ranks alone, with a line to `warn`; if neither can (step 1
    moved nothing), every score is zero.
    """
    g, l = normalise(global_term), normalise(local_term)
    say = warn or (lambda line: None)
    if g is None and l is None:
        say("contribution: step 1 changed no kernel element; no element scores above another")
        return {i: np.zeros_like(c, dtype=np.float64) for i, c in global_term.items()}
    if l is None:
        if mix_ratio < 1.0:
            total = float(sum(np.sum(c, dtype=np.float64) for c in local_term.values()))
            say(f"contribution: the local contribution sums to {total:.3g} (not positive); "
                "ranking by the global contribution alone")
        return g
    if g is None:
        if mix_ratio > 0.0:
            say("contribution: the global contribution is zero; ranking by the local one alone")
        return l
    return {i: mix_ratio * g[i] + (1.0 - mix_ratio) * l[i] for i in g}


def dpu_scores(final: Sequence[np.ndarray], start: Sequence[np.ndarray],
               local: Sequence[np.ndarray], indices: Sequence[int],
               mix_ratio: float, warn: Optional[Callable[[str], None]] = None
               ) -> Dict[int, np.ndarray]:
    """The DPU metric for the weights at `indices` (kernels, maybe biases).

    Args:
      final: weights after the full-training step, `model.weights` order.
      start: the step's start point w_start.
      local: accumulated local contributions, same order.
      indices: which weights compete for the budget.
      mix_ratio: λ; 1 gives GCPU, 0 gives LCPU.
      warn: receives a line when a term cannot be normalised (see `mix`).

    Returns:
      A score array per index; larger means more important to update.
    """
    local_term = {i: np.asarray(local[i], np.float64) for i in indices}
    return mix(global_contribution(final, start, indices), local_term, mix_ratio, warn)
