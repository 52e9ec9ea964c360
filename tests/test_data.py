import numpy as np
import pytest

from tf_dpu.data import RoundSchedule, check_labels, load_dataset
from tf_dpu.errors import DataError


def test_mnist_is_the_bundled_real_digits(mnist):
    assert mnist.x_train.shape == (4000, 28, 28, 1)
    assert (len(mnist.x_val), len(mnist.x_test)) == (300, 700)
    assert mnist.num_classes == 10
    assert mnist.x_train.dtype == np.float32
    # Normalised with the MNIST mean/std: background pixels sit at -0.1307/0.3081.
    assert np.isclose(mnist.x_train.min(), -0.1307 / 0.3081, atol=1e-5)
    assert set(np.unique(mnist.y_train)) == set(range(10))


def test_validation_and_test_are_disjoint_parts_of_the_test_set():
    a = load_dataset("digits", 100, seed=3)
    b = load_dataset("digits", 100, seed=4)
    assert len(a.x_val) == 100 and len(a.x_test) == 400
    joined = np.concatenate([a.x_val, a.x_test]).reshape(500, -1)
    assert len(np.unique(joined, axis=0)) == len(np.unique(
        np.concatenate([b.x_val, b.x_test]).reshape(500, -1), axis=0))
    assert not np.array_equal(a.x_val, b.x_val)  # the seed picks validation
    assert np.array_equal(a.x_train, b.x_train)  # the pool does not depend on it


def test_mnist1d_is_generated_offline():
    d = load_dataset("mnist1d", 300, seed=0)
    assert d.x_train.shape == (4000, 40) and d.num_classes == 10
    assert abs(float(d.x_train.mean())) < 1e-3


def test_schedule_grows_by_prefix_without_repeats():
    s = RoundSchedule(1000, 100, 50, 5, seed=7)
    assert [s.size(r) for r in range(5)] == [100, 150, 200, 250, 300]
    last = s.indices(4)
    assert len(np.unique(last)) == 300
    for r in range(4):
        assert np.array_equal(s.indices(r), last[:s.size(r)])
    assert not np.array_equal(RoundSchedule(1000, 100, 50, 5, seed=8).indices(0), s.indices(0))


def test_schedule_needing_more_samples_than_the_pool_is_refused():
    with pytest.raises(DataError, match="needs 1100 training samples"):
        RoundSchedule(1000, 100, 250, 5, seed=0)


def test_unknown_dataset_and_too_many_validation_samples():
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar", 10, 0)
    with pytest.raises(DataError, match="the test set has only 500"):
        load_dataset("digits", 500, 0)


def _write(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_uint8_images_are_scaled_and_get_a_channel(tmp_path):
    rng = np.random.RandomState(0)
    spec = _write(tmp_path, x_train=rng.randint(0, 256, (50, 6, 6), np.uint8),
                  y_train=rng.randint(0, 3, (50, 1)), x_test=rng.randint(0, 256, (20, 6, 6), np.uint8),
                  y_test=rng.randint(0, 3, 20))
    d = load_dataset(spec, 5, 0)
    assert d.x_train.shape == (50, 6, 6, 1) and d.y_train.shape == (50,)
    assert abs(float(d.x_train.mean())) < 1e-4 and d.input_shape == (6, 6, 1)


def test_npz_validation_arrays_are_the_validation_split_and_the_test_set_stays_whole(
        tmp_path):
    rng = np.random.RandomState(0)
    x_train = rng.randint(0, 256, (50, 6, 6), np.uint8)
    x_val = rng.randint(0, 256, (7, 6, 6), np.uint8)
    spec = _write(tmp_path, x_train=x_train, y_train=np.arange(50) % 3,
                  x_test=rng.randint(0, 256, (20, 6, 6), np.uint8), y_test=np.arange(20) % 3,
                  x_val=x_val, y_val=np.arange(7) % 3)
    d = load_dataset(spec, 5, 0)
    assert len(d.x_test) == 20 and len(d.x_val) == 7 and d.x_val.shape[1:] == (6, 6, 1)
    # Standardized with the training statistics, as the other splits are.
    scaled = x_train / 255.0
    expected = (x_val / 255.0 - scaled.mean()) / scaled.std()
    assert np.allclose(d.x_val[..., 0], expected, atol=1e-5)
    assert np.array_equal(d.y_val, np.arange(7) % 3)


def test_a_label_equal_to_num_classes_is_refused():
    y = np.array([0, 1, 2])
    with pytest.raises(DataError, match="test label 3 is outside"):
        check_labels("d", y, np.array([0, 3]), 3)
    assert check_labels("d", y, np.array([0, 2]), 3) == 3


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int)}, "missing array(s) x_test, y_test"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_test": np.zeros((4, 2)),
      "y_test": np.zeros(4, int), "x_val": np.zeros((2, 2))}, "has x_val without y_val"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_test": np.zeros((4, 2)),
      "y_test": np.zeros(4, int), "x_val": np.zeros((2, 3)), "y_val": np.zeros(2, int)},
     "x_val samples are (3,)"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3, int), "x_test": np.zeros((4, 2)),
      "y_test": np.zeros(4, int)}, "one label per row"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_test": np.zeros((4, 3)),
      "y_test": np.zeros(4, int)}, "x_test samples are (3,)"),
    ({"x_train": np.full((4, 2), np.nan), "y_train": np.zeros(4, int),
      "x_test": np.zeros((4, 2)), "y_test": np.zeros(4, int)}, "NaN"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((4, 2)),
      "y_test": np.zeros(4, int)}, "y_train integer"),
])
def test_npz_malformed_files_are_refused(tmp_path, arrays, message):
    with pytest.raises(DataError) as e:
        load_dataset(_write(tmp_path, **arrays), 1, 0)
    assert message in str(e.value)


def test_npz_missing_or_corrupt_file(tmp_path):
    with pytest.raises(DataError, match="npz file not found"):
        load_dataset(f"npz:{tmp_path}/nope.npz", 1, 0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not a readable npz file"):
        load_dataset(f"npz:{bad}", 1, 0)
