"""Matrix products in the layout XLA:CPU's fast path takes.

Reverse-mode AD writes a dense layer's weight gradient as ``dot_general(delta, x)`` with the
batch as the contracting dimension of *both* operands (then a transpose). XLA:CPU sends a
product whose left operand contracts its leading dimension to Eigen, and the plain
``(m, k) @ (k, n)`` to YNNPACK: measured (CPU process time, 2-core CPU, 128^3, 200 in a
``fori_loop``) 41-62 us against 22-27 us, and the medium digits MLP's train step runs three
of them. :func:`canonical_dots` rewrites a function's jaxpr so that every such product
contracts the trailing dimension of its left operand: the operand is transposed into a copy
first (an ``optimization_barrier`` keeps XLA from folding the transpose back into the
product), and ``transpose(dot(a, b))`` is computed as ``dot(b^T, a)``, which leaves no
transpose after the product. Same values up to float rounding (the products sum in another
order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend
from jax import lax

Literal = jax.extend.core.Literal
CALLS = ("jit", "pjit", "closed_call")  # inlined, so the products inside are rewritten too


def _leading_contraction(eqn: Any) -> bool:
  """A ``dot_general`` without batch dimensions whose lhs does not contract its trailing
  dimensions (what XLA:CPU computes on the slow path)."""
  if eqn.primitive.name != "dot_general":
    return False
  (lc, _), (lb, rb) = eqn.params["dimension_numbers"]
  nd = len(eqn.invars[0].aval.shape)
  return not lb and not rb and bool(lc) and tuple(lc) != tuple(range(nd - len(lc), nd))


def _dot(lhs: jax.Array, rhs: jax.Array, lc, rc, params: dict) -> jax.Array:
  """``dot_general(lhs, rhs)`` contracting ``lc`` with ``rc``, lhs contracted last."""
  lc, rc = tuple(lc), tuple(rc)
  if lc != tuple(range(lhs.ndim - len(lc), lhs.ndim)):
    free = tuple(i for i in range(lhs.ndim) if i not in lc)
    lhs = lax.optimization_barrier(lax.transpose(lhs, free + lc))
    lc = tuple(range(len(free), lhs.ndim))
  return lax.dot_general_p.bind(lhs, rhs, **{**params, "dimension_numbers": ((lc, rc), ((), ()))})


def _eval(jaxpr: Any, consts: list, *args: Any) -> list:
  env: dict = {}
  read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
  env.update(zip(jaxpr.constvars, consts, strict=True))
  env.update(zip(jaxpr.invars, args, strict=True))
  uses: dict = {}
  for e in jaxpr.eqns:
    for v in e.invars:
      if not isinstance(v, Literal):
        uses.setdefault(v, []).append(e)
  for v in jaxpr.outvars:
    if not isinstance(v, Literal):
      uses.setdefault(v, []).append(None)
  # transpose(dot(a, b)) of 2-D operands, the dot used only there: computed as dot(b, a)
  swapped: dict[int, Any] = {}
  for e in jaxpr.eqns:
    if (_leading_contraction(e) and len(e.outvars[0].aval.shape) == 2
        and len(e.invars[1].aval.shape) == 2):
      u = uses.get(e.outvars[0], [])
      if (len(u) == 1 and u[0] is not None and u[0].primitive.name == "transpose"
          and tuple(u[0].params["permutation"]) == (1, 0)):
        swapped[id(u[0])] = e
  skip = {id(d) for d in swapped.values()}
  for e in jaxpr.eqns:
    if id(e) in skip:
      continue  # computed at its transpose
    if id(e) in swapped:
      d = swapped[id(e)]
      (lc, rc), _ = d.params["dimension_numbers"]
      prec = d.params.get("precision")
      params = {**d.params, "precision": tuple(reversed(prec))} if isinstance(prec, tuple) \
          else d.params  # operands swap, so do their precisions
      outs = [_dot(read(d.invars[1]), read(d.invars[0]), rc, lc, params)]
    else:
      ins = [read(v) for v in e.invars]
      if _leading_contraction(e):
        (lc, rc), _ = e.params["dimension_numbers"]
        outs = [_dot(ins[0], ins[1], lc, rc, e.params)]
      elif e.primitive.name in CALLS:
        sub = e.params.get("jaxpr") or e.params.get("call_jaxpr")
        outs = _eval(sub.jaxpr, sub.consts, *ins)
      else:
        with e.ctx.manager:
          outs = e.primitive.bind(*ins, **e.primitive.get_bind_params(e.params))
        if not e.primitive.multiple_results:
          outs = [outs]
    env.update(zip(e.outvars, outs, strict=True))
  return [read(v) for v in jaxpr.outvars]


def canonical_dots(fun: Callable) -> Callable:
  """``fun`` with every matrix product that contracts its left operand's leading dimension
  (weight gradients of dense layers) rewritten to contract its trailing one; see the module
  docstring. Products inside ``jit`` calls are rewritten, those inside other higher-order
  primitives (``scan``, ``cond``, custom derivatives) are left as they are."""
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
    out = _eval(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)
  return wrapped
