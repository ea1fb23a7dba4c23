"""DARTS (second order, unrolled; exact Hessian-vector products)
on the procedural shapes images, NB201-style mini cell space.

Otherwise as configs/darts_shapes.py: searches the 729-cell space (none / skip / 3x3 conv
on 6 edges) with a tiny supernet, derives the cell, retrains it from scratch with 2 seeds and
evaluates the test split once.
About 30-60 s on 2 CPU cores.

  python run.py run --config configs/darts2_shapes.py --store sqlite:///runs/darts2.db
"""

from metaopt.configs import darts_shapes


def get_config(arg=None):
  c = darts_shapes.get_config(arg)
  c.name = "darts2_shapes"
  c.order = 2
  return c
