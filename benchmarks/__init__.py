"""Benchmarks for sparsemm: problems (datasets x formulas x sizes) x backends.

- ``problems``: the benchmark problems as data.
- ``backends``: ``sparsemm`` (the CLI) and ``lme4`` (via Rscript), one ``run(problem)`` each.
- ``ehr_generator``: a synthetic EHR encounter generator with known true parameters.
- ``run``: the command line runner, ``python -m benchmarks.run``.
"""
