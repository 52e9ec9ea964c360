import numpy as np
import pytest

from tf_dpu import contribution, selection


def test_top_k_is_global_across_layers():
    scores = {0: np.array([[0.1, 0.9], [0.2, 0.3]]), 2: np.array([0.8, 0.05, 0.7])}
    masks = selection.top_k(scores, 3, 4)
    assert masks[1] is None and masks[3] is None
    assert masks[0].tolist() == [[False, True], [False, False]]
    assert masks[2].tolist() == [True, False, True]


def test_top_k_exact_count_with_ties_and_nan():
    scores = {0: np.zeros((10, 10)), 1: np.full(5, np.nan)}
    masks = selection.top_k(scores, 7, 2)
    assert selection.count(masks) == 7
    assert masks[0].ravel()[:7].all()       # ties go to the earliest positions
    assert not masks[1].any()               # NaN never wins


def test_top_k_only_among_active_elements():
    scores = {0: np.arange(10.0)}
    active = {0: np.arange(10) < 5}
    masks = selection.top_k(scores, 3, 1, active)
    assert np.flatnonzero(masks[0]).tolist() == [2, 3, 4]


def test_random_per_layer_respects_the_budget_and_layer_shares():
    shapes = [(784, 300), (300,), (300, 100), (100,), (100, 10), (10,)]
    total = 784 * 300 + 300 * 100 + 100 * 10
    budget = int(np.ceil(0.01 * total))
    masks = selection.random_per_layer(shapes, [0, 2, 4], 0.01, budget,
                                       np.random.RandomState(0))
    assert selection.count(masks) == budget
    for i in (0, 2, 4):
        n = np.prod(shapes[i])
        assert np.floor(0.01 * n) <= masks[i].sum() <= np.ceil(0.01 * n)
    other = selection.random_per_layer(shapes, [0, 2, 4], 0.01, budget, np.random.RandomState(1))
    assert not np.array_equal(masks[0], other[0])


def test_magnitude_keeps_the_largest_absolute_values():
    w = [np.array([[-5.0, 1.0], [0.5, 4.0]]), np.array([3.0, -0.1])]
    masks = selection.magnitude(w, [0, 1], 3)
    assert masks[0].tolist() == [[True, False], [False, True]]
    assert masks[1].tolist() == [True, False]


def test_normalise_and_mix():
    g = {0: np.array([1.0, 3.0]), 1: np.array([4.0])}
    l = {0: np.array([0.0, 1.0]), 1: np.array([1.0])}
    n = contribution.normalise(g)
    assert sum(v.sum() for v in n.values()) == pytest.approx(1.0)
    assert contribution.mix(g, l, 1.0)[1] == pytest.approx([0.5])
    assert contribution.mix(g, l, 0.0)[0] == pytest.approx([0.0, 0.5])
    assert contribution.mix(g, l, 0.5)[0] == pytest.approx([0.0625, 0.4375])


def test_a_term_that_cannot_be_normalised_is_left_out_with_a_line():
    assert contribution.normalise({0: np.zeros(3)}) is None
    assert contribution.normalise({0: np.array([-1.0, 0.5])}) is None
    g = {0: np.array([0.0, 0.0, 1.0, 3.0])}
    lines = []
    # LCPU whose local contribution sums negative: ranked by the global term,
    # not by position (zeros would select the first elements).
    s = contribution.mix(g, {0: np.array([0.5, 0.2, -1.0, -2.0])}, 0.0, lines.append)
    assert np.argsort(-s[0]).tolist()[:2] == [3, 2]
    assert "not positive" in lines[0]
    lines.clear()
    s = contribution.mix({0: np.zeros(4)}, {0: np.array([0.0, 2.0, 0.0, 1.0])}, 0.5,
                         lines.append)
    assert np.argmax(s[0]) == 1 and "global contribution is zero" in lines[0]
    lines.clear()
    s = contribution.mix({0: np.zeros(2)}, {0: np.zeros(2)}, 0.5, lines.append)
    assert not s[0].any() and "changed no kernel element" in lines[0]


def test_dpu_scores_rank_by_both_terms():
    start = [np.zeros(4)]
    final = [np.array([0.0, 0.0, 2.0, 0.1])]     # element 2 moved most
    local = [np.array([0.0, 5.0, 0.0, 0.0])]     # element 1 lowered the loss most
    s = contribution.dpu_scores(final, start, local, [0], 0.5)[0]
    assert set(np.argsort(-s)[:2]) == {1, 2}
    assert np.argmax(contribution.dpu_scores(final, start, local, [0], 1.0)[0]) == 2
    assert np.argmax(contribution.dpu_scores(final, start, local, [0], 0.0)[0]) == 1
