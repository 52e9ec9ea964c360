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


INITIALIZERS = ("glorot", "torch")


class _Seeds:
    """Hands out a distinct, reproducible initializer per layer.

    `glorot` is Keras' default (Glorot-uniform kernels, zero biases; He-normal
    for the BatchNorm nets). `torch` is PyTorch's default for Linear and Conv
    layers, U(±1/sqrt(fan_in)) for kernels *and* biases: the reference code's
    initialization, which decides how a partial update of w0 (round 0 and
    re-initialized rounds) behaves.
    """

    def __init__(self, seed, initializer="glorot"):
        self._counter = itertools.count(seed * 1000)
        self.torch = initializer == "torch"

    def _torch(self, fan_in):
        limit = 1.0 / float(fan_in) ** 0.5
        return keras.initializers.RandomUniform(-limit, limit, seed=next(self._counter))

    def kernel(self, fan_in):
        if self.torch:
            return self._torch(fan_in)
        return keras.initializers.GlorotUniform(seed=next(self._counter))

    def bias(self, fan_in):
        return self._torch(fan_in) if self.torch else "zeros"

    def he(self, fan_in):
        if self.torch:
            return self._torch(fan_in)
        return keras.initializers.HeNormal(seed=next(self._counter))


def _dense(x, units, seeds, **kwargs):
    fan_in = x.shape[-1]
    return L.Dense(units, kernel_initializer=seeds.kernel(fan_in),
                   bias_initializer=seeds.bias(fan_in), **kwargs)(x)


def build_model(name: str, input_shape, num_classes: int, seed: int,
                initializer: str = "glorot") -> keras.Model:
    """Builds an uncompiled Keras model that outputs logits.

    Args:
      name: `mlp`, `cnn`, `vgg` or `resnet<6n+2>` (resnet20, resnet56, ...).
      input_shape: shape of one sample, e.g. (28, 28, 1) or (40,).
      num_classes: number of output logits.
      seed: initializer seed; the same seed gives bit-identical weights.
      initializer: `glorot` (Keras' default) or `torch` (PyTorch's default).

    Returns:
      A `keras.Model` whose kernels (rank >= 2 weights) are what DPU selects from.
    """
    if initializer not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {initializer!r}")
    seeds = _Seeds(seed, initializer)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
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
    model = keras.Model(inputs, outputs, name=name)
    # Keras names layers from a process-wide counter (dense, dense_1, ...), and
    # the converter writes those names into the .tflite: without fixed names
    # the same weights would give different files (and patches) depending on
    # how many models the process built before, e.g. after a resume.
    for index, layer in enumerate(model.layers):
        layer._name = f"{type(layer).__name__.lower()}_{index}"  # pylint: disable=protected-access
    # Input and output names are fixed when a Model is built: build it again.
    return keras.Model(model.inputs, model.outputs, name=name)


def _as_image(inputs, name):
    if len(inputs.shape) != 4:
        raise ConfigError(f"--model={name} needs image inputs (H, W, C), got "
                          f"samples of shape {tuple(inputs.shape[1:])}")
    return inputs


def _mlp(x, num_classes, seeds):
    # LeNet-300-100, the reference's MNIST MLP.
    x = L.Flatten()(x)
    x = _dense(x, 300, seeds, activation="relu")
    x = _dense(x, 100, seeds, activation="relu")
    return _dense(x, num_classes, seeds)


def _cnn(x, num_classes, seeds):
    # A small conv net without BatchNorm: Conv1D for vectors (MNIST-1D), Conv2D
    # for images, so the same name serves both.
    if len(x.shape) == 2:
        x = L.Reshape((x.shape[1], 1))(x)
    conv, pool = (L.Conv1D, L.MaxPooling1D) if len(x.shape) == 3 else (L.Conv2D, L.MaxPooling2D)
    for filters in (16, 32):
        fan_in = 3 ** (len(x.shape) - 2) * x.shape[-1]
        x = conv(filters, 3, padding="same", activation="relu",
                 kernel_initializer=seeds.kernel(fan_in), bias_initializer=seeds.bias(fan_in))(x)
        x = pool(2)(x)
    x = L.Flatten()(x)
    x = _dense(x, 64, seeds, activation="relu")
    return _dense(x, num_classes, seeds)


def _conv_bn_relu(x, filters, seeds, strides=1):
    x = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                 kernel_initializer=seeds.he(9 * x.shape[-1]))(x)
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
        x = _dense(x, 1024, seeds, use_bias=False)
        x = L.ReLU()(L.BatchNormalization()(x))
    return _dense(x, num_classes, seeds)


def _resnet(x, num_classes, blocks_per_stage, seeds):
    # The CIFAR ResNet of He et al. (depth 6n+2), with 1x1 projection shortcuts.
    x = _conv_bn_relu(x, 16, seeds)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = _conv_bn_relu(x, filters, seeds, strides)
            y = L.Conv2D(filters, 3, padding="same", use_bias=False,
                         kernel_initializer=seeds.he(9 * y.shape[-1]))(y)
            y = L.BatchNormalization()(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False,
                                    kernel_initializer=seeds.he(shortcut.shape[-1]))(shortcut)
                shortcut = L.BatchNormalization()(shortcut)
            x = L.ReLU()(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    return _dense(x, num_classes, seeds)
