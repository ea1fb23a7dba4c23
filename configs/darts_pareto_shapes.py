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

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.program = "nas"
  c.name = "darts_pareto_shapes"
  c.seed = 0
  c.dataset = "shapes"
  c.space = "nb201_mini"
  c.method = "darts"
  c.order = 1
  c.hessian = "exact"
  c.hpo = "none"
  c.model = dict(features=8, n_cells=1, stages=2, stem_stride=2, partial_k=1)
  c.search = dict(epochs=1, batch_size=64, w_lr=0.05, a_lr=0.01, aux_skip=0.0,
                  skip_penalty=0.0)
  c.safeguard = dict(enabled=True, max_skip=2, eig_window=2, eig_ratio=0.75, eig_iters=8)
  c.hardware = dict(metric="flops", penalty=0.0)
  c.retrain = dict(epochs=3, seeds=1, batch_size=64, lr=3e-3, wd=1e-4)
  c.fallback = dict(searcher="nsga2", trials=16, population=8, epochs=0,
                    objectives=["accuracy", "flops"], when="always")
  return c
