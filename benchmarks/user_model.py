"""The kind of Keras model a user brings, for the edge benchmark and the tests."""


def user_model(input_shape=(28, 28, 1), classes=10, seed=0, keras_version=2):
    """The kind of model a user brings: depthwise-separable with BatchNorm and ReLU6.

    Args:
      input_shape, classes: the data set's.
      seed: the initializers'.
      keras_version: 2 for a `tf_keras` model, 3 for a Keras 3 one (the same
        layers and weights, as `tf.keras` builds it from TensorFlow 2.16 on).
    """
    import importlib  # pylint: disable=import-outside-toplevel
    keras = importlib.import_module({2: "tf_keras", 3: "keras"}[keras_version])
    layers = keras.layers
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False,
                      kernel_initializer=init)(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                               depthwise_initializer=init)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.Conv2D(16, 1, use_bias=False, kernel_initializer=init)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, kernel_initializer=init)(x),
                       name="user_model")
