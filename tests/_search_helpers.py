"""The scanned search the searcher tests share: ask -> evaluate -> tell inside one
``lax.scan`` (jit and vmap it over seeds and functions as a test needs)."""

import jax
import jax.numpy as jnp


def scan_search(s, f, seed, rounds, n, out=None):
  """``rounds`` rounds of ``n`` points of searcher ``s`` on ``f`` (``u[n, d] -> y[n]``, every
  trial complete); round ``r`` asks with ``fold_in(key(seed + 1), r)`` from ``init(key(seed))``.

  Returns ``(final state, best y, per-round outputs)``: ``out(state, u, y)`` after each tell,
  stacked by the scan (None without ``out``).
  """
  def body(carry, r):
    st, best = carry
    st, u = s.ask(st, jax.random.fold_in(jax.random.key(seed + 1), r), n)
    y = f(u)
    st = s.tell(st, u, y, jnp.zeros(n, jnp.int32))
    return (st, jnp.minimum(best, y.min())), None if out is None else out(st, u, y)

  (st, best), outs = jax.lax.scan(body, (s.init(jax.random.key(seed)), jnp.inf),
                                  jnp.arange(rounds))
  return st, best, outs
