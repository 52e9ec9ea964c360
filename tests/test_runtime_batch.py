"""A file whose graph fixes batch 1 still runs over many samples in LiteRT."""

import numpy as np

import tf_dpu  # noqa: F401  (Keras 2 before TensorFlow loads)
from tf_dpu.models import build_model
from tflite_edge import runtime
from tflite_edge.convert import convert_int8


def test_a_one_d_cnn_runs_sample_by_sample_when_its_batch_cannot_be_resized():
    # The 1-D CNN's Reshape constants hold batch 1: XNNPack refuses a resize,
    # which stopped every exported MNIST-1D CNN run at its first accuracy.
    model = build_model("cnn", (40,), 10, seed=1)
    x = np.random.RandomState(0).randn(9, 40).astype(np.float32)
    file = convert_int8(model, x)
    many = runtime.logits(file, x, batch=4)
    one_by_one = np.concatenate([runtime.logits(file, x[i:i + 1]) for i in range(len(x))])
    assert many.shape == (9, 10)
    np.testing.assert_array_equal(many, one_by_one)
