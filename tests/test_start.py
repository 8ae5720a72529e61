"""Starting values for theta from one-term fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsemm import solver
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.start import one_term_starts

DATA = Path(__file__).parent / "data"
INSTEVAL = str(DATA / "InstEval.parquet")


def _start(
    formula: str, path: str, reml: bool = True
) -> tuple[np.ndarray | None, LinearMixedModel]:
    model = LinearMixedModel(solver.prepare(formula, path), reml)
    return one_term_starts(model.pls.cp, model.tmap, model.criterion), model


@pytest.mark.parametrize("reml", [True, False])
def test_each_one_term_fit_is_that_model_fitted(reml: bool) -> None:
    """A one-term search (here the first term's: s, with the most levels) gives the
    theta and sigma^2 of that term's model fitted alone."""
    from sparsemm.solver.start import _one_term

    model = LinearMixedModel(solver.prepare("y ~ service + (1 | d) + (1 | s)", INSTEVAL), reml)
    layout, cp = model.tmap.layout, model.pls.cp
    off, nl = layout.offsets[0], layout.nlevels[0]
    block = slice(off, off + nl)
    theta, sigma2 = _one_term(cp, cp.ZtZ.diagonal()[block], cp.ZtX[block], cp.ZtY[block],
                              model.criterion)  # fmt: skip
    alone = LinearMixedModel(solver.prepare("y ~ service + (1 | s)", INSTEVAL), reml).fit()
    assert theta == pytest.approx(alone.sol.theta[0], rel=2e-3)
    assert sigma2 == pytest.approx(alone.criterion_sigma2(), rel=1e-4)


def test_insteval_start_is_near_the_optimum() -> None:
    start, model = _start("y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", INSTEVAL)
    assert start is not None
    optimum = model.fit().sol.theta
    # within 50% of each theta_j, where lme4's start (1, 1, 1) is 2.3 to 11 times off
    np.testing.assert_allclose(start, optimum, rtol=0.5)
    assert np.all(np.abs(np.log(start / optimum)) < np.abs(np.log(optimum)))


def test_no_start_for_one_term_or_vector_terms() -> None:
    assert _start("y ~ service + (1 | d)", INSTEVAL)[0] is None
    start, _ = _start("Reaction ~ Days + (Days | Subject)", str(DATA / "sleepstudy.parquet"))
    assert start is None
