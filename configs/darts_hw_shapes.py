"""Hardware-aware DARTS (first order): accuracy traded against FLOPs, NB201-style mini cell space.

As configs/darts_shapes.py, with the hardware penalty on: the architecture loss adds
``0.1 * expected FLOPs / FLOPs of the uniform cell`` (hardware.py; ProxylessNAS / FBNet),
so the derived cell is cheaper than the unpenalised search's (tests/test_multiobjective.py).
On tiny supernets trained for few epochs the accuracy signal is weak and the penalty turns
every edge to a free op within an epoch; the skip safeguard then reports a collapse and the
black-box stage (NSGA-II on accuracy vs FLOPs) takes over.
``--config.hardware.metric=latency`` uses per-op latencies measured on this device instead;
``--config.hardware.budget=X`` a hinge at X FLOPs instead of the linear penalty.
About 30-60 s on 2 CPU cores.

  python run.py run --config configs/darts_hw_shapes.py --store sqlite:///runs/darts_hw.db
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.program = "nas"
  c.name = "darts_hw_shapes"
  c.seed = 0
  c.dataset = "shapes"
  c.space = "nb201_mini"
  c.method = "darts"
  c.order = 1
  c.hessian = "exact"
  c.hpo = "none"
  c.model = dict(features=8, n_cells=1, stages=2, stem_stride=2, partial_k=1)
  c.search = dict(epochs=3, batch_size=64, w_lr=0.05, a_lr=0.01, aux_skip=0.0,
                  skip_penalty=0.0)
  c.safeguard = dict(enabled=True, max_skip=2, eig_window=2, eig_ratio=0.75, eig_iters=8)
  c.hardware = dict(metric="flops", penalty=0.1)
  c.retrain = dict(epochs=3, seeds=2, batch_size=64, lr=3e-3, wd=1e-4)
  # when a safeguard fires (or the search loss goes non-finite) black-box search takes over
  # the cell space ("none": off); epochs 0 trains each candidate for retrain.epochs
  # a FLOPs penalty pushes every edge towards the free ops (skip / none): when the skip
  # safeguard calls that a collapse, NSGA-II goes on over the cell space for accuracy vs FLOPs
  c.fallback = dict(searcher="nsga2", trials=8, population=4, epochs=0,
                    objectives=["accuracy", "flops"])
  return c
