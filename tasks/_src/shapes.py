"""A procedural 16x16 grey-scale image dataset of shapes and textures (10 classes).

Served by the TFDS builder ``metaopt_shapes`` (``load_dataset("shapes")``, see
``tasks._src.data``): array_record files read with ``as_data_source``, offline, fixed 60/20/20
splits. 3000 images generated from ``np.random.default_rng(0)``; every image has a random
position, size, contrast, background gradient and Gaussian pixel noise, so the classes are
separable only by local structure (edges, periodicity, curvature): cells with convolutions
do measurably better than cells of skips and pools.

Classes: 0 disc, 1 square, 2 triangle, 3 cross, 4 ring, 5 horizontal stripes, 6 vertical
stripes, 7 diagonal stripes, 8 checkerboard, 9 dots.
"""

from __future__ import annotations

import numpy as np

SIZE = 16
NUM_IMAGES = 3000
NUM_CLASSES = 10
CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "hstripes",
                            "vstripes", "dstripes", "checker", "dots")
DESCRIPTION = ("3000 procedural 16x16x1 images of 10 shape/texture classes (disc, square, "
               "triangle, cross, ring, stripes x3, checkerboard, dots) with random position, "
               "size, contrast, background gradient and pixel noise, from default_rng(0).")


def _image(rng: np.random.Generator, label: int) -> np.ndarray:
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  cy, cx = rng.uniform(5, SIZE - 5, size=2)
  r = rng.uniform(3.0, 5.5)
  dy, dx = yy - cy, xx - cx
  period = rng.uniform(2.5, 4.5)
  phase = rng.uniform(0, 2 * np.pi)
  window = (np.abs(dy) < r + 1) & (np.abs(dx) < r + 1)  # textures fill a patch
  if label == 0:
    m = dy ** 2 + dx ** 2 < r ** 2
  elif label == 1:
    m = (np.abs(dy) < r * 0.85) & (np.abs(dx) < r * 0.85)
  elif label == 2:
    m = (dy > -r) & (dy < r) & (np.abs(dx) < (dy + r) * 0.6)
  elif label == 3:
    w = max(1.0, r / 3)
    m = ((np.abs(dy) < w) & (np.abs(dx) < r)) | ((np.abs(dx) < w) & (np.abs(dy) < r))
  elif label == 4:
    d = np.sqrt(dy ** 2 + dx ** 2)
    m = (d < r) & (d > r - 1.6)
  elif label == 5:
    m = window & (np.sin(2 * np.pi * yy / period + phase) > 0)
  elif label == 6:
    m = window & (np.sin(2 * np.pi * xx / period + phase) > 0)
  elif label == 7:
    s = 1 if rng.uniform() < 0.5 else -1
    m = window & (np.sin(2 * np.pi * (yy + s * xx) / (period * 1.4) + phase) > 0)
  elif label == 8:
    p = int(rng.integers(2, 4))
    m = window & ((((yy // p) + (xx // p)) % 2) == 0)
  else:
    p = int(rng.integers(3, 5))
    m = window & ((yy % p) == 0) & ((xx % p) == 0)
  contrast = rng.uniform(0.6, 1.0)
  g = rng.normal(size=2) * 0.01
  background = 0.5 + g[0] * (yy - 8) + g[1] * (xx - 8)
  img = background + contrast * 0.5 * m.astype(np.float32)
  img = img + rng.normal(scale=0.08, size=img.shape)
  return np.clip(img, 0.0, 1.0).astype(np.float32)[..., None]


def generate(n: int = NUM_IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``n`` images ``(n, 16, 16, 1)`` in [0, 1] and balanced labels, from ``default_rng(seed)``."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % NUM_CLASSES
  rng.shuffle(labels)
  x = np.stack([_image(rng, int(c)) for c in labels])
  return x, labels.astype(np.int64)
