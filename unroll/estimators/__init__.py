"""Gradient estimators, one module per family."""
