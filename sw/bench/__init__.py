"""Benchmarks of whole compiled models (``vitaccel bench e2e``, ``vitaccel bench pruning``).

They compile models, so they live beside the compiler; the unit and program benchmarks that
need no compiler are in :mod:`vitaccel.sim.bench`.
"""
