"""--rank=per_bit: elements ranked by contribution per estimated patch bit."""

import numpy as np

from tf_dpu import bitcost, selection


def test_sparser_buffers_and_larger_steps_cost_more_bits():
    steps = np.array([0.0, 1.0, -1.0, 5.0, 40.0])
    bits = bitcost.element_bits(steps, 10_000, 100)
    assert bits[1] == bits[2] and bits[0] < bits[1] < bits[3] < bits[4]
    assert (bitcost.element_bits(steps, 10_000, 10) > bits).all()


def test_int8_steps_at_the_frozen_scale():
    scale = np.array([0.1, 0.1, 0.5])
    steps = bitcost.int8_steps(np.array([0.26, 0.0, 1.0]), np.array([0.0, 0.04, 0.0]), scale)
    assert steps.tolist() == [3.0, 0.0, 2.0]


def test_elements_that_change_no_int8_value_rank_last_and_cheap_ones_first():
    start = [np.zeros(4), np.zeros(4)]
    final = [np.array([0.5, 0.01, 3.0, 0.5]), np.array([0.2, 0.2, 0.2, 0.2])]
    scales = [np.full(4, 0.1), None]            # weight 1 is not stored as int8
    scores = {0: np.array([1.0, 9.0, 1.0, 0.9]), 1: np.array([0.1, 0.2, 0.3, 0.4])}
    ranked = bitcost.per_bit(scores, final, start, scales, size=3)
    # Element 0/1 has the best score but moves less than half a step: it goes last.
    order = np.argsort(-np.concatenate([ranked[0], ranked[1]]), kind="stable")
    assert order[-1] == 1
    # Same score: 5 steps cost fewer bits than 30.
    assert ranked[0][0] > ranked[0][2]
    assert np.array_equal(ranked[1], scores[1])   # no int8 scale: untouched
    masks = selection.top_k(ranked, 3, 2)
    assert not masks[0][1]
