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

    def __init__(self, seed, initializer="glorot", bn_momentum=0.9, bn_epsilon=1e-5):
        self._counter = itertools.count(seed * 1000)
        self.torch = initializer == "torch"
        self.bn_momentum, self.bn_epsilon = bn_momentum, bn_epsilon

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


def _batch_norm(seeds):
    return L.BatchNormalization(momentum=seeds.bn_momentum, epsilon=seeds.bn_epsilon)


def _dense(x, units, seeds, **kwargs):
    fan_in = x.shape[-1]
    return L.Dense(units, kernel_initializer=seeds.kernel(fan_in),
                   bias_initializer=seeds.bias(fan_in), **kwargs)(x)


def build_model(name: str, input_shape, num_classes: int, seed: int,
                initializer: str = "glorot", width_multiplier: float = 0.25,
                bn_momentum: float = 0.9, bn_epsilon: float = 1e-5) -> keras.Model:
    """Builds an uncompiled Keras model that outputs logits.

    Args:
      name: `mlp`, `cnn`, `vgg`, `mobilenet`, `ds_cnn`, `resnet8` or
        `resnet<6n+2>` (resnet20, resnet56, ...).
      input_shape: shape of one sample, e.g. (28, 28, 1) or (40,).
      num_classes: number of output logits.
      seed: initializer seed; the same seed gives bit-identical weights.
      initializer: `glorot` (Keras' default) or `torch` (PyTorch's default).
      width_multiplier: MobileNet's alpha: every layer's filters times this.
      bn_momentum, bn_epsilon: BatchNorm's moving-average momentum and epsilon.
        The defaults are PyTorch's (momentum 0.1 in its terms) and the reference
        code's; Keras' 0.99 moves the statistics so slowly that a model trained
        for a few dozen steps evaluates with its initial ones.

    Returns:
      A `keras.Model` whose kernels (rank >= 2 weights) are what DPU selects from.
    """
    if initializer not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {initializer!r}")
    seeds = _Seeds(seed, initializer, bn_momentum, bn_epsilon)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    if name == "mlp":
        outputs = _mlp(inputs, num_classes, seeds)
    elif name == "cnn":
        outputs = _cnn(inputs, num_classes, seeds)
    elif name == "vgg":
        outputs = _vgg(_as_image(inputs, name), num_classes, seeds)
    elif name == "mobilenet":
        outputs = _mobilenet(_as_image(inputs, name), num_classes, seeds, width_multiplier)
    elif name == "ds_cnn":
        outputs = _ds_cnn(_as_image(inputs, name), num_classes, seeds)
    elif name == "resnet8":
        outputs = _resnet8(_as_image(inputs, name), num_classes, seeds)
    elif is_resnet(name):
        outputs = _resnet(_as_image(inputs, name), num_classes, (int(name[6:]) - 2) // 6,
                          seeds)
    else:
        raise ConfigError(f"unknown model {name!r}")
    return fixed_names(keras.Model(inputs, outputs, name=name))


def fixed_names(model: keras.Model) -> keras.Model:
    """The model with layer names that depend on nothing but its architecture.

    Keras names layers from a process-wide counter (dense, dense_1, ...), and
    the converter writes those names into the .tflite: without fixed names
    the same weights would give different files (and patches) depending on
    how many models the process built before, e.g. after a resume.
    """
    for index, layer in enumerate(model.layers):
        layer._name = f"{type(layer).__name__.lower()}_{index}"  # pylint: disable=protected-access
    # Input and output names are fixed when a Model is built: build it again.
    return keras.Model(model.inputs, model.outputs, name=model.name)


def _as_image(inputs, name):
    if len(inputs.shape) != 4:
        raise ConfigError(f"--model={name} needs image inputs (H, W, C), got "
                          f"samples of shape {tuple(inputs.shape[1:])} (use mlp or cnn)")
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
    return L.ReLU()(_batch_norm(seeds)(x))


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
        x = L.ReLU()(_batch_norm(seeds)(x))
    return _dense(x, num_classes, seeds)


def _bn_relu(x, seeds, max_value=None):
    return L.ReLU(max_value)(_batch_norm(seeds)(x))


# MobileNet v1's depthwise-separable blocks: (pointwise filters at alpha = 1, stride).
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                     (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def _mobilenet(x, num_classes, seeds, alpha):
    """MobileNetV1 (Howard et al. 2017): a 3x3 convolution, then 13 blocks of
    DepthwiseConv2D + BN + ReLU6 and 1x1 Conv2D + BN + ReLU6, global average pooling,
    Dense. Every filter count is scaled by the width multiplier alpha.

    The first convolution has stride 2 for images of 64 pixels and more (the
    ImageNet design) and stride 1 below, as CIFAR ports do: five halvings would
    take a 28x28 digit to 1x1 (measured on 1,000 MNIST digits, 20 epochs: 58 %
    validation accuracy with stride 2, 66 % with stride 1). Kernels start from
    Keras' default initializer, as in Keras' own MobileNet. The architecture
    needs data: on 500 digits it stays near chance for a few epochs.
    """
    def filters(n):
        return max(8, int(n * alpha + 4) // 8 * 8)   # multiples of 8, as the reference does
    first_stride = 2 if min(x.shape[1], x.shape[2]) >= 64 else 1
    x = L.Conv2D(filters(32), 3, strides=first_stride, padding="same", use_bias=False,
                 kernel_initializer=seeds.kernel(9 * x.shape[-1]))(x)
    x = _bn_relu(x, seeds, 6.0)
    for pointwise, strides in _MOBILENET_BLOCKS:
        x = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                              depthwise_initializer=seeds.kernel(9))(x)
        x = _bn_relu(x, seeds, 6.0)
        x = L.Conv2D(filters(pointwise), 1, use_bias=False,
                     kernel_initializer=seeds.kernel(x.shape[-1]))(x)
        x = _bn_relu(x, seeds, 6.0)
    x = L.GlobalAveragePooling2D()(x)
    return _dense(x, num_classes, seeds)


def _ds_cnn(x, num_classes, seeds):
    """The MLPerf Tiny keyword-spotting DS-CNN (small): a 10x4 convolution with stride 2
    and 64 filters, four blocks of 3x3 DepthwiseConv2D + BN + ReLU and 1x1 Conv2D (64) +
    BN + ReLU, average pooling over the whole map, Dense. (The reference's dropout
    layers, a training-time regulariser, are left out.)"""
    x = L.Conv2D(64, (10, 4), strides=2, padding="same", use_bias=True,
                 kernel_initializer=seeds.kernel(40 * x.shape[-1]),
                 bias_initializer=seeds.bias(40 * x.shape[-1]))(x)
    x = _bn_relu(x, seeds)
    for _ in range(4):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=True,
                              depthwise_initializer=seeds.kernel(9), bias_initializer=seeds.bias(9))(x)
        x = _bn_relu(x, seeds)
        x = L.Conv2D(64, 1, use_bias=True, kernel_initializer=seeds.kernel(64),
                     bias_initializer=seeds.bias(64))(x)
        x = _bn_relu(x, seeds)
    x = L.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    x = L.Flatten()(x)
    return _dense(x, num_classes, seeds)


def _resnet8(x, num_classes, seeds):
    """The MLPerf Tiny image-classification ResNet-8: a 3x3 convolution (16), three
    residual stacks of two 3x3 convolutions with BN (16, 32, 64 filters; strides 1, 2,
    2; a 1x1 convolution on the shortcut where the shape changes, without BN, as the
    reference), average pooling over the whole map, Dense."""
    x = L.Conv2D(16, 3, padding="same", kernel_initializer=seeds.he(9 * x.shape[-1]),
                 bias_initializer=seeds.bias(9 * x.shape[-1]))(x)
    x = _bn_relu(x, seeds)
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        y = L.Conv2D(filters, 3, strides=strides, padding="same",
                     kernel_initializer=seeds.he(9 * x.shape[-1]),
                     bias_initializer=seeds.bias(9 * x.shape[-1]))(x)
        y = _bn_relu(y, seeds)
        y = L.Conv2D(filters, 3, padding="same", kernel_initializer=seeds.he(9 * filters),
                     bias_initializer=seeds.bias(9 * filters))(y)
        y = _batch_norm(seeds)(y)
        shortcut = x
        if strides != 1 or x.shape[-1] != filters:
            shortcut = L.Conv2D(filters, 1, strides=strides, padding="same",
                                kernel_initializer=seeds.he(x.shape[-1]),
                                bias_initializer=seeds.bias(x.shape[-1]))(x)
        x = L.ReLU()(L.Add()([shortcut, y]))
    x = L.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    x = L.Flatten()(x)
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
            y = _batch_norm(seeds)(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False,
                                    kernel_initializer=seeds.he(shortcut.shape[-1]))(shortcut)
                shortcut = _batch_norm(seeds)(shortcut)
            x = L.ReLU()(L.Add()([y, shortcut]))
    x = L.GlobalAveragePooling2D()(x)
    return _dense(x, num_classes, seeds)
