"""Gradient estimators, one module per family; the window machinery and the builder they
are made from are in ``unroll.window``, their registry in ``unroll.registry``."""
