"""The networks of the reference experiments, built for any input and class count.

Every layer gets its own initializer seed derived from the run seed, so w0 (the
random initialization that DPU re-initializes to) is a pure function of the
seed and the architecture.

BatchNorm policy (vgg, resnet*): BN gamma/beta are treated like biases (see
`--bias_policy`), and BN moving statistics change the deployed model too. In
fully trained rounds they are trained and sent. In partial rounds they are
trained and counted in `changed_biases` under `--bias_policy=full`, and frozen
(the network runs BN in inference mode) under `masked` and `frozen`.
"""

import itertools

import tf_keras as keras

from tf_dpu.config import is_resnet
from tf_dpu.errors import ConfigError

L = keras.layers


class _Seeds:
    """Hands out a distinct, reproducible initializer seed per layer."""

    def __init__(self, seed):
        self._counter = itertools.count(seed * 1000)

    def kernel(self):
        return keras.initializers.GlorotUniform(seed=next(self._counter))

    def he(self):
        return keras.initializers.HeNormal(seed=next(self._counter))


def build_model(name: str, input_shape, num_classes: int, seed: int) -> keras.Model:
    """Builds an uncompiled Keras model that outputs logits.

    Args:
      name: `mlp`, `cnn`, `vgg` or `resnet<6n+2>` (resnet20, resnet56, ...).
      input_shape: shape of one sample, e.g. (28, 28, 1) or (40,).
      num_classes: number of output logits.
      seed: initializer seed; the same seed gives bit-identical weights.

    Returns:
      A `keras.Model` whose kernels (rank >= 2 weights) are what DPU selects from.
    """
    seeds = _Seeds(seed)
    inputs = keras.Input(shape=tuple(input_shape))
    if name == "mlp":
        outputs = _mlp(inputs, num_classes, seeds)
    elif name == "cnn":
        outputs = _cnn(inputs, num_classes, seeds)
    elif name == "vgg":
        outputs = _vgg(_as_image(inputs, name), num_classes, seeds)
    elif is_resnet(name):
        outputs = _resnet(_as_image(inputs, name), num_classes, (int(name[6:]) - 2) // 6,
                          seeds)
    else:
        raise ConfigError(f"unknown model {name!r}")
    return keras.Model(inputs, outputs, name=name)


def _as_image(inputs, name):
    if len(inputs.shape) != 4:
        raise ConfigError(f"--model={name} needs image inputs (H, W, C), got "
                          f"samples of shape {tuple(inputs.shape[1:])}")
    return inputs


def _mlp(x, num_classes, seeds):
    # LeNet-300-100, the reference's MNIST MLP.
    x = L.Flatten()(x)
    x = L.Dense(300, activation="relu", kernel_initializer=seeds.kernel())(x)
    x = L.Dense(100, activation="relu", kernel_initializer=seeds.kernel())(x)
    return L.Dense(num_classes, kernel_initializer=seeds.kernel())(x)


def _cnn(x, num_classes, seeds):
    # A small conv net without BatchNorm: Conv1D for vectors (MNIST-1D), Conv2D
    # for images, so the same name serves both.
    if len(x.shape) == 2:
        x = L.Reshape((x.shape[1], 1))(x)
    conv, pool = (L.Conv1D, L.MaxPooling1D) if len(x.shape) == 3 else (L.Conv2D, L.MaxPooling2D)
    for filters in (16, 32):
        x = conv(filters, 3, padding="same", activation="relu",
                 kernel_initializer=seeds.kernel())(x)
        x = pool(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", kernel_initializer=seeds.kernel())(x)
    return L.Dense(num_classes, kernel_initializer=seeds.kernel())(x)


def _conv_bn_relu(x, filters, seeds, strides=1):
    x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                 kernel_initializer=seeds.he())(x)
    return L.ReLU()(L.BatchNormalization()(x))


def _vgg(x, num_classes, seeds):
    # The VGG-small of the partial-updating literature on CIFAR-10 (about 14M
    # parameters, the 56 MB of fp32 weights the paper quotes).
    for filters in (128, 256, 512):
        x = _conv_bn_relu(x, filters, seeds)
        x = _conv_bn_relu(x, filters, seeds)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    for _ in range(2):
        x = L.Dense(1024, use_bias=False, kernel_initializer=seeds.kernel())(x)
        x = L.ReLU()(L.BatchNormalization()(x))
    return L.Dense(num_classes, kernel_initializer=seeds.kernel())(x)


def _resnet(x, num_classes, blocks_per_stage, seeds):
    # The CIFAR ResNet of He et al. (depth 6n+2), with 1x1 projection shortcuts.
    x = _conv_bn_relu(x, 16, seeds)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = _conv_bn_relu(x, filters, seeds, strides)
            y = L.Conv2D(filters, 3, padding="same", use_bias=False,
                         kernel_initializer=seeds.he())(y)
            y = L.BatchNormalization()(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False,
                                    kernel_initializer=seeds.he())(shortcut)
                shortcut = L.BatchNormalization()(shortcut)
            x = L.ReLU()(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    return L.Dense(num_classes, kernel_initializer=seeds.kernel())(x)
