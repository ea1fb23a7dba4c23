"""A procedural 32x32x3 image dataset in 10 classes, large enough to need streaming.

``images32``: 50,000 train, 5,000 valid and 5,000 test images; ``images32_5k``: the first 5,000
of the same train images (same valid and test), for memory comparisons. Generated
deterministically from ``np.random.default_rng(seed)`` in blocks of 1,000 (block ``b`` from
``default_rng([seed, b])``, so any prefix is the same in both), stored by the TFDS builders
``metaopt_images32`` / ``metaopt_images32_5k`` as uint8 array_record (prepared on first use,
without TensorFlow), and read lazily: the loaded splits are random-access views over the
array_record files, not arrays in memory.

Classes (a coloured shape or texture on a coloured gradient, random position, size, colours,
pixel noise): 0 disc, 1 square, 2 triangle, 3 cross, 4 ring, 5 horizontal stripes, 6 vertical
stripes, 7 diagonal stripes, 8 checkerboard, 9 dots.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SIZE = 32
NUM_CLASSES = 10
BLOCK = 1000
SIZES = {"images32": (50_000, 5_000, 5_000), "images32_5k": (5_000, 5_000, 5_000)}
DESCRIPTION = ("Procedural 32x32x3 uint8 images of 10 shape/texture classes (random position, "
               "size, colours, background gradient, pixel noise), generated from a seed.")


def _block(seed: int, b: int) -> tuple[np.ndarray, np.ndarray]:
  """Block ``b``: ``BLOCK`` uint8 images ``(BLOCK, 32, 32, 3)`` and balanced labels."""
  rng = np.random.default_rng([seed, b])
  m = BLOCK
  labels = np.arange(m) % NUM_CLASSES
  rng.shuffle(labels)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  yy, xx = yy[None], xx[None]
  u = lambda lo, hi: rng.uniform(lo, hi, (m, 1, 1)).astype(np.float32)
  cy, cx, r = u(9, SIZE - 9), u(9, SIZE - 9), u(5, 9)
  period, phase = u(4, 8), u(0, 2 * np.pi)
  dy, dx = yy - cy, xx - cx
  d = np.sqrt(dy ** 2 + dx ** 2)
  window = (np.abs(dy) < r + 2) & (np.abs(dx) < r + 2)
  w = np.maximum(1.5, r / 3)
  p = np.floor(u(3, 5))
  masks = [
      d < r,
      (np.abs(dy) < r * 0.85) & (np.abs(dx) < r * 0.85),
      (dy > -r) & (dy < r) & (np.abs(dx) < (dy + r) * 0.6),
      ((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r)),
      (d < r) & (d > r - 2.5),
      window & (np.sin(2 * np.pi * yy / period + phase) > 0),
      window & (np.sin(2 * np.pi * xx / period + phase) > 0),
      window & (np.sin(2 * np.pi * (yy + xx) / (period * 1.4) + phase) > 0),
      window & ((((yy // p) + (xx // p)) % 2) == 0),
      window & ((yy % p) == 0) & ((xx % p) == 0),
  ]
  mask = np.select([labels[:, None, None] == c for c in range(NUM_CLASSES)], masks)
  bg = rng.uniform(0.2, 0.8, (m, 1, 1, 3)).astype(np.float32)
  fg = rng.uniform(0.0, 1.0, (m, 1, 1, 3)).astype(np.float32)
  fg = np.where(np.abs(fg - bg) < 0.25, 1.0 - fg, fg)  # visible against the background
  g = rng.normal(0, 0.01, (m, 2, 1, 1)).astype(np.float32)
  grad = (g[:, 0] * (yy - 16) + g[:, 1] * (xx - 16))[..., None]
  img = bg + grad + (fg - bg) * mask[..., None].astype(np.float32)
  img = img + rng.normal(0, 0.06, img.shape).astype(np.float32)
  return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def blocks(n: int, seed: int = 0, first: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``n`` images (a multiple of ``BLOCK``) from block ``first`` on, one block at a time."""
  if n % BLOCK:
    raise ValueError(f"n={n}: must be a multiple of {BLOCK}")
  for b in range(first, first + n // BLOCK):
    yield _block(seed, b)


def split_blocks(name: str) -> dict[str, tuple[int, int]]:
  """``split -> (first block, images)`` of dataset ``name``: valid and test come after the
  50,000 train images of ``images32`` in both sizes."""
  n_train, n_valid, n_test = SIZES[name]
  full = SIZES["images32"][0] // BLOCK
  return {"train": (0, n_train), "valid": (full, n_valid),
          "test": (full + n_valid // BLOCK, n_test)}
