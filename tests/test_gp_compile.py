"""GP-BO's compile structure does not change its maths.

``gp_bo(buckets=True)`` fits and proposes on the smallest power-of-two prefix of the buffer
that holds the data (one compiled copy per size); ``buckets=False`` on the whole buffer with the
unused rows masked out (one copy). Masked rows add exact zeros to the kernel matrix, so both
must give the same hyperparameters and proposals up to float rounding: the buckets are a
compile-time / run-time trade, not a change of the search.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import benchmark_functions as bf
from metaopt._src.gp import gp_bo
from metaopt._src.searchers import sobol


def test_gp_bucketed_and_whole_buffer_asks_agree():
  x = sobol(2).ask(sobol(2).init(jax.random.key(5)), None, 12)[1]
  y = bf.branin(x)
  out = {}
  for buckets in (True, False):
    # capacity 128: buckets of 64 and 128 rows; 12 observations fit in the 64-row one
    s = gp_bo(2, n_startup=4, capacity=128, fit_steps=10, n_candidates=32, n_local=8,
              n_restarts=3, grad_steps=3, n_exploit=(6,), buckets=buckets)
    st = s.tell(s.init(jax.random.key(0)), x, y, jnp.zeros(12, jnp.int32))
    out[buckets] = jax.jit(s.ask, static_argnums=2)(st, jax.random.key(3), 3)
  (st_b, u_b), (st_w, u_w) = out[True], out[False]
  assert bool(jnp.all((u_b >= 0) & (u_b <= 1)))
  assert float(jnp.min(jnp.abs(u_b[:, None] - u_b[None]).sum(-1) + jnp.eye(3))) > 1e-6
  np.testing.assert_allclose(u_b, u_w, atol=1e-4)
  for k in ("log_ls", "log_s2", "log_noise"):
    np.testing.assert_allclose(st_b["theta"][k], st_w["theta"][k], atol=1e-4, rtol=1e-4)
