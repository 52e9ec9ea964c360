import numpy as np
import pytest

from tf_dpu.errors import ConfigError
from tf_dpu.models import build_model
from tf_dpu.weights import BIAS, KERNEL, STATE, Layout


def test_mlp_is_lenet_300_100():
    layout = Layout(build_model("mlp", (28, 28, 1), 10, seed=0))
    assert [layout.shapes[i] for i in layout.indices(KERNEL)] == [(784, 300), (300, 100), (100, 10)]
    assert layout.size(KERNEL) == 266200 and layout.size(BIAS) == 410


def test_same_seed_same_weights_other_seed_other_weights():
    a = build_model("cnn", (28, 28, 1), 10, seed=5).get_weights()
    b = build_model("cnn", (28, 28, 1), 10, seed=5).get_weights()
    c = build_model("cnn", (28, 28, 1), 10, seed=6).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_cnn_uses_1d_convolutions_for_vectors():
    model = build_model("cnn", (40,), 10, seed=0)
    assert model.output_shape == (None, 10)
    assert any(len(s) == 3 for s in Layout(model).shapes)  # a Conv1D kernel


@pytest.mark.parametrize("name, kernels", [("resnet20", 22), ("vgg", 9)])
def test_batchnorm_models_on_32x32x3(name, kernels):
    model = build_model(name, (32, 32, 3), 100, seed=0)
    layout = Layout(model)
    assert model.output_shape == (None, 100)
    assert len(layout.indices(KERNEL)) == kernels
    assert layout.has_state and layout.size(STATE) > 0


def test_image_models_refuse_vectors():
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("resnet20", (40,), 10, seed=0)
