"""Black-box NAS for accuracy vs FLOPs (NSGA-II), after a short DARTS search.

The NB201-style mini cell space on the procedural shapes images: a one-epoch DARTS search
derives a first cell, then NSGA-II searches the same cell space for two objectives,
validation accuracy (maximised) and the cell's FLOPs (minimised, hardware.py's table),
training each candidate from scratch; every value is stored, the output holds the Pareto
front and its hypervolume, and the most accurate cell is retrained and tested once.
(``fallback.when="always"``: the black-box stage runs whether or not the architecture
gradients were trusted; ``fallback.objectives`` may add ``params`` or ``latency``.)
About 1-2 min on 2 CPU cores.

  python run.py run --config configs/darts_pareto_shapes.py --store sqlite:///runs/pareto.db
"""

from metaopt.configs import darts_shapes


def get_config(arg=None):
  c = darts_shapes.get_config(arg)
  c.name = "darts_pareto_shapes"
  c.search.epochs = 1
  c.hardware = dict(metric="flops", penalty=0.0)
  c.retrain.seeds = 1
  c.fallback = dict(searcher="nsga2", trials=16, population=8, epochs=0,
                    objectives=["accuracy", "flops"], when="always")
  return c
