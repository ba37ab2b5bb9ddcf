"""On-device augmentation and normalisation in JAX, shared by every pipeline.

CIFAR training augmentation = 4-pixel zero padding of the raw uint8 image, a random crop back to
the original size, and a horizontal flip with p = 0.5; padding happens BEFORE normalisation, so
padded pixels are 0 in [0, 255] (-mean/std after normalising), as in the reference.
All randomness comes from one key per (seed, epoch, step): `augment_key`, then `augment_params`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CIFAR_PAD = 4


def epoch_key(seed: int, epoch):
    """The key of one epoch: fold_in(PRNGKey(seed), epoch). Works on Python or traced ints."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), epoch)


def train_permutation(seed: int, epoch, num_train: int):
    """The training order of an epoch: a permutation of range(num_train), a pure function of
    (seed, epoch), so resuming mid-epoch replays the same order."""
    perm_key, _ = jax.random.split(epoch_key(seed, epoch))
    return jax.random.permutation(perm_key, num_train)


def augment_key(seed: int, epoch, step):
    """The augmentation key of one training step of one epoch."""
    _, aug_key = jax.random.split(epoch_key(seed, epoch))
    return jax.random.fold_in(aug_key, step)


def augment_params(key, batch_size: int, pad: int = CIFAR_PAD):
    """Per-example crop offsets dy, dx in [0, 2*pad] (into the padded image) and flip bits.

    Exposed so tests can reproduce a batch's augmentation with an independent NumPy reference.
    """
    key_y, key_x, key_flip = jax.random.split(key, 3)
    dy = jax.random.randint(key_y, (batch_size,), 0, 2 * pad + 1)
    dx = jax.random.randint(key_x, (batch_size,), 0, 2 * pad + 1)
    flip = jax.random.bernoulli(key_flip, 0.5, (batch_size,))
    return dy, dx, flip


def pad_crop_flip(images, dy, dx, flip, pad: int = CIFAR_PAD):
    """Zero-pads uint8 images (B, H, W, C) by `pad`, crops (H, W) at (dy, dx), flips where flip."""
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0),
                                                           (height, width, channels)))
    cropped = crop(padded, dy, dx)
    return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1, :], cropped)


def normalize(images, mean, std):
    """uint8 [0, 255] -> float32 (x / 255 - mean) / std per channel, as the reference."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std
