"""Which elements a partial round may change: masks from scores or at random.

Masks are lists in `model.weights` order: a boolean array (True = updated)
for every weight that competes, None for the others.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np

Masks = List[Optional[np.ndarray]]


def preselect(scores: Dict[int, np.ndarray], ratio: float) -> Dict[int, np.ndarray]:
    """Keeps each weight's own top int(ratio * n) scores; the others become -inf.

    The reference code cuts every layer to its top 65 % before the global
    sort (to save memory); as a side effect a small layer can never take more
    than 65 % of its elements. ratio = 1 changes nothing.
    """
    if ratio >= 1.0:
        return scores
    out = {}
    for i, s in scores.items():
        flat = np.where(np.isfinite(s.ravel()), s.ravel().astype(np.float64), -np.inf)
        kept = np.full(flat.size, -np.inf)
        top = np.argsort(-flat, kind="stable")[:int(flat.size * ratio)]
        kept[top] = flat[top]
        out[i] = kept.reshape(s.shape)
    return out


def top_k(scores: Dict[int, np.ndarray], k: int, length: int,
          active: Optional[Dict[int, np.ndarray]] = None) -> Masks:
    """Keeps the `k` largest scores across all given weights at once (global top-k).

    Args:
      scores: a score array per weight index.
      k: how many elements to keep in total.
      length: number of weights of the model (length of the returned list).
      active: optional masks; only elements still active may be kept.

    Returns:
      Boolean masks with exactly min(k, candidates) True elements in total,
      candidates being the active elements with a finite score (NaN and -inf,
      e.g. cut by `preselect`, never take a slot). Ties are broken by
      position, so the result is deterministic.
    """
    keys = sorted(scores)
    flat = np.concatenate([scores[i].ravel() for i in keys]).astype(np.float64)
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    if active is not None:
        allowed = np.concatenate([active[i].ravel() for i in keys])
        flat = np.where(allowed, flat, -np.inf)
    k = min(k, int(np.count_nonzero(flat > -np.inf)))
    chosen = np.zeros(flat.size, bool)
    if k > 0:
        # Stable sort on the negated scores: equal scores go to the earliest
        # position, independently of the platform's partition algorithm.
        chosen[np.argsort(-flat, kind="stable")[:k]] = True
    return _split(chosen, scores, keys, length)


def within_bytes(scores: Dict[int, np.ndarray], cost, max_bytes: int, length: int,
                 limit: Optional[int] = None) -> Masks:
    """The longest prefix of the score order whose patch fits in `max_bytes`.

    Args:
      scores: a score array per weight index (larger = more important).
      cost: callable(masks) -> exact patch bytes for that selection; it must not
        decrease as elements are added (true of the patch format's codes).
      max_bytes: the budget.
      length: number of weights of the model.
      limit: optional cap on the number of elements.

    Returns:
      Masks of the top-n elements, n as large as fits (possibly 0).
    """
    keys = sorted(scores)
    flat = np.concatenate([scores[i].ravel() for i in keys]).astype(np.float64)
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    order = np.argsort(-flat, kind="stable")
    finite = int(np.count_nonzero(flat > -np.inf))

    def masks_of(n):
        chosen = np.zeros(flat.size, bool)
        chosen[order[:n]] = True
        return _split(chosen, scores, keys, length)

    low, high = 0, finite if limit is None else min(limit, finite)
    while low < high:  # largest n with cost(n) <= max_bytes
        middle = (low + high + 1) // 2
        if cost(masks_of(middle)) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return masks_of(low)


def magnitude(weights: Sequence[np.ndarray], indices: Sequence[int], k: int,
              layer_preselect: float = 1.0) -> Masks:
    """Global top-k by |w|: the pruning baseline's mask (see `preselect`)."""
    return top_k(preselect({i: np.abs(weights[i]) for i in indices}, layer_preselect), k,
                 len(weights))


def per_layer_counts(sizes: Sequence[int], ratio: float, budget: int) -> np.ndarray:
    """About `ratio` of each layer's elements, never more than `budget` in all.

    Each layer gets floor(ratio * n) or ceil(ratio * n) elements, rounded by
    largest remainder so that the total never exceeds `budget`.
    """
    sizes = np.asarray(sizes, np.int64)
    want = ratio * sizes
    counts = np.floor(want).astype(np.int64)
    spare = max(0, budget - int(counts.sum()))
    for j in np.argsort(-(want - counts), kind="stable")[:spare]:
        if counts[j] < sizes[j]:
            counts[j] += 1
    return counts


def random_per_layer(shapes: Sequence[tuple], indices: Sequence[int], ratio: float,
                     budget: int, rng: np.random.RandomState) -> Masks:
    """A random mask of about `ratio` of each weight's elements (RPU; see `per_layer_counts`)."""
    sizes = [int(np.prod(shapes[i])) for i in indices]
    masks: Masks = [None] * len(shapes)
    for i, size, count in zip(indices, sizes, per_layer_counts(sizes, ratio, budget)):
        mask = np.zeros(size, bool)
        mask[rng.choice(size, size=count, replace=False)] = True
        masks[i] = mask.reshape(shapes[i])
    return masks


def top_per_layer(scores: Dict[int, np.ndarray], ratio: float, budget: int,
                  length: int) -> Masks:
    """Each weight's own top `per_layer_counts` scores (ties go to the earlier position)."""
    keys = sorted(scores)
    counts = per_layer_counts([scores[i].size for i in keys], ratio, budget)
    masks: Masks = [None] * length
    for i, count in zip(keys, counts):
        flat = scores[i].ravel().astype(np.float64)
        mask = np.zeros(flat.size, bool)
        mask[np.argsort(-flat, kind="stable")[:count]] = True
        masks[i] = mask.reshape(scores[i].shape)
    return masks


def count(masks: Masks) -> int:
    return int(sum(np.count_nonzero(m) for m in masks if m is not None))


def _split(flat_mask, scores, keys, length) -> Masks:
    masks: Masks = [None] * length
    offset = 0
    for i in keys:
        size = scores[i].size
        masks[i] = flat_mask[offset:offset + size].reshape(scores[i].shape)
        offset += size
    return masks
