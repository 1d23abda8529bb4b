"""Gradient estimators, one module per family, each made with the builder
(`unroll.builder`) from the types of `unroll.contract`; every one is registered in
`unroll.registry` and re-exported from `unroll`."""

__all__ = []
