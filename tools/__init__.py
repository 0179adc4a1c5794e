"""Development tools over the package: demo-model training and evaluation, benchmarks, checks.

Not installed with the package (``pip install`` carries ``streamer``, ``engines`` and
``build_engine`` only). Run them from a source checkout's root as modules, e.g.
``python3 -m tools.eval_demo --help``.
"""
