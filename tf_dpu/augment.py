"""Training-time augmentation of image batches, inside the compiled training step.

`crop_flip` is the reference's CIFAR augmentation (torchvision's
`RandomCrop(32, padding=4)` then `RandomHorizontalFlip()`): pad every side by
4 pixels, take a random crop of the original size, flip half of the images
left to right. torchvision pads the raw image with zeros before normalising,
so the padding here is the normalised value of a raw zero (`fill`), not 0.

Randomness is stateless and keyed by (seed, step number), so a resumed run
draws the same crops as an uninterrupted one, and every replica of a
distributed step draws the same ones.
"""

import tensorflow as tf

PADDING = 4


def crop_flip(x: tf.Tensor, key: tf.Tensor, fill) -> tf.Tensor:
    """Random 4-pixel-padded crops and horizontal flips of a batch [N, H, W, C].

    Args:
      x: the batch, already normalised.
      key: int64 [2], the stateless random key of this step.
      fill: the value (scalar or per channel) of padded pixels.
    """
    n = tf.shape(x)[0]
    height, width = x.shape[1], x.shape[2]
    fill = tf.cast(tf.broadcast_to(fill, [x.shape[-1]]), x.dtype)
    padded = tf.pad(x - fill, [[0, 0], [PADDING, PADDING], [PADDING, PADDING], [0, 0]]) + fill
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    offsets = tf.random.stateless_uniform([n, 2], crop_key, 0, 2 * PADDING + 1, tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None]
    cols = offsets[:, 1:] + tf.range(width)[None]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([n], flip_key, 0, 2, tf.int32) > 0
    return tf.where(flip[:, None, None, None], tf.reverse(out, [2]), out)
