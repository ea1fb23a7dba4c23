"""GDAS (hard Gumbel-softmax, straight-through, tau 10 -> 0.1)
on the procedural shapes images, NB201-style mini cell space.

Otherwise as configs/darts_shapes.py: searches the 729-cell space (none / skip / 3x3 conv
on 6 edges) with a tiny supernet, derives the cell, retrains it from scratch with 2 seeds and
evaluates the test split once.
About 30-60 s on 2 CPU cores.

  python run.py run --config configs/gdas_shapes.py --store sqlite:///runs/gdas.db
"""

from metaopt.configs import darts_shapes


def get_config(arg=None):
  c = darts_shapes.get_config(arg)
  c.name = "gdas_shapes"
  c.method = "gdas"
  c.search.a_lr = 0.03
  return c
