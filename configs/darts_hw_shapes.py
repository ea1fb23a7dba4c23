"""Hardware-aware DARTS (first order): accuracy traded against FLOPs, NB201-style mini cell space.

As configs/darts_shapes.py, with the hardware penalty on: the architecture loss adds
``0.1 * expected FLOPs / FLOPs of the uniform cell`` (hardware.py; ProxylessNAS / FBNet),
so the derived cell is cheaper than the unpenalised search's (tests/test_nas.py,
test_hardware_aware_config_derives_a_cell_on_the_cost_side). On tiny supernets trained for
few epochs the accuracy signal is weak and the penalty turns every edge to a free op within
an epoch; the skip safeguard then reports a collapse and the black-box stage (NSGA-II on
accuracy vs FLOPs) takes over; it returns the candidate with the best penalised objective,
``(1 - accuracy) + 0.1 * FLOPs / FLOPs of the uniform cell``, so the trade-off holds.
``--config.hardware.metric=latency`` uses per-op latencies measured on this device instead;
``--config.hardware.budget=X`` a hinge at X FLOPs instead of the linear penalty.
About 30-60 s on 2 CPU cores.

  python run.py run --config configs/darts_hw_shapes.py --store sqlite:///runs/darts_hw.db
"""

from metaopt.configs import darts_shapes


def get_config(arg=None):
  c = darts_shapes.get_config(arg)
  c.name = "darts_hw_shapes"
  c.hardware = dict(metric="flops", penalty=0.1)
  # a FLOPs penalty pushes every edge towards the free ops (skip / none): when the skip
  # safeguard calls that a collapse, NSGA-II goes on over the cell space for accuracy vs FLOPs
  c.fallback = dict(searcher="nsga2", trials=8, population=4, epochs=0,
                    objectives=["accuracy", "flops"])
  return c
