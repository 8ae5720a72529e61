"""Issue #7's agreement tests at scale (``pytest -m slow``): the iterative path against
the exact one on InstEval and on the synthetic EHR design at 100k and 1M rows (fixed
effects, their SEs and the variance components within 1e-3 relative, the objective within
1e-3 absolute).  Minutes each: InstEval ~4 min (its crossing is dense: the deflation
grows to its widest), 1M ~10 min for both paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ehr_generator import FORMULA, generate
from sparsemm import solver
from sparsemm.solver.lmm import LinearMixedModel

HERE = Path(__file__).parent
INSTEVAL = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"


def _agree(data: solver.ModelData) -> None:
    exact = LinearMixedModel(data).fit().result
    it = LinearMixedModel(data, ordering="iterative").fit().result
    assert it.diagnostics.ordering.startswith("iterative")
    assert abs(it.reml_criterion - exact.reml_criterion) < 1e-3
    for a, b in zip(exact.fixed_effects, it.fixed_effects):
        assert b.estimate == pytest.approx(a.estimate, rel=1e-3, abs=1e-6)
        assert b.std_error == pytest.approx(a.std_error, rel=1e-3)
    for a, b in zip(exact.variance_components, it.variance_components):
        if a.term2 is None:
            assert b.sd == pytest.approx(a.sd, rel=1e-3)
        else:
            assert b.corr == pytest.approx(a.corr, abs=1e-3)


@pytest.mark.slow
def test_insteval() -> None:
    _agree(solver.prepare(INSTEVAL, str(HERE / "data" / "InstEval.parquet")))


@pytest.mark.slow
@pytest.mark.parametrize("rows", [100_000, 1_000_000])
def test_generated_ehr(rows: int) -> None:
    _agree(solver.prepare(FORMULA, generate(rows, seed=20240601)))
