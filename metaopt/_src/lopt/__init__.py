"""Learned optimizers: meta-parameters, optax export, meta-gradient estimators, training."""
