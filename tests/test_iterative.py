"""The iterative path (PCG + stochastic Lanczos log-determinant on the Schur complement)
against the exact one on the same model: solves to round-off, the log-determinant within
its reported Monte Carlo error, and the fit within issue #7's tolerances (fixed effects
and SDs 1e-3 relative, objective 1e-3 absolute)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.ehr_generator import FORMULA, generate
from sparsemm import solver
from sparsemm.solver.iterative import SchurOperator
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.pls_iterative import IterativePLS


@pytest.fixture(scope="module")
def data() -> solver.ModelData:
    return solver.prepare(FORMULA, generate(30_000, seed=7))


THETA = np.array([0.71, 0.28, 0.41, 0.04, 0.21])


def test_solves_and_logdet_match_the_exact_factor(data) -> None:
    exact = LinearMixedModel(data, ordering="schur")
    sol = exact.solve(THETA)
    op = SchurOperator(data.cp.ZtZ, data.layout)
    n1 = data.layout.nlevels[0]
    lam = exact.tmap.Lambda(THETA)
    op.update(THETA[0], lam[n1:, n1:])
    R = np.asarray(lam.T @ np.column_stack([data.cp.ZtX, data.cp.ZtY]))
    f = exact.pls.factor
    np.testing.assert_allclose(op.solve_M(R), f.half_solve_t(f.half_solve(R)), atol=1e-9)
    ld = op.logdet()
    assert 0 < ld.std_error < 1e-3
    assert abs(ld.value - sol.logdet_L) < 5 * ld.std_error + 1e-8


def _agree(exact: solver.FitResult, it: solver.FitResult, sd_abs: float = 0.0) -> None:
    """Issue #7's tolerances: objective 1e-3 absolute, fixed effects, their SEs and the
    variance components 1e-3 relative."""
    assert it.diagnostics.ordering.startswith("iterative")
    assert abs(it.reml_criterion - exact.reml_criterion) < 1e-3
    for a, b in zip(exact.fixed_effects, it.fixed_effects):
        assert b.estimate == pytest.approx(a.estimate, rel=1e-3, abs=1e-6)
        assert b.std_error == pytest.approx(a.std_error, rel=1e-3)
    for a, b in zip(exact.variance_components, it.variance_components):
        if a.term2 is None:
            assert b.sd == pytest.approx(a.sd, rel=1e-3, abs=sd_abs)
        else:
            assert b.corr == pytest.approx(a.corr, abs=1e-3)


def test_fit_agrees_with_the_exact_path(data) -> None:
    exact_fit = LinearMixedModel(data).fit()
    model = LinearMixedModel(data, ordering="iterative")
    assert isinstance(model.pls, IterativePLS)
    fit = model.fit()
    it = fit.result
    _agree(exact_fit.result, it, sd_abs=1e-6)
    (mc,) = [c for c in it.diagnostics.checks if c.code == "logdet_mc_error"]
    assert mc.value is not None and 0 < mc.value < 1e-3
    exact_ranef = exact_fit.ranef()
    iter_ranef = fit.ranef()
    b_exact = exact_ranef.column("condval").to_numpy()
    np.testing.assert_allclose(
        iter_ranef.column("condval").to_numpy(), b_exact, atol=1e-3 * np.abs(b_exact).max()
    )
    # approximate conditional SDs (preconditioner + deflation space; measured ~1e-3)
    sd_exact = exact_ranef.column("condsd").to_numpy()
    np.testing.assert_allclose(iter_ranef.column("condsd").to_numpy(), sd_exact, rtol=2e-2)
    assert any(c.code == "condvar_approximate" for c in it.diagnostics.checks)


# Issue #7's agreement at scale (``pytest -m slow``): minutes each. InstEval ~4 min (its
# crossing is dense: the deflation grows to its widest); 1M did not finish within 30 min
# in the session that added it.


def _agree_on(data: solver.ModelData) -> None:
    exact = LinearMixedModel(data).fit().result
    _agree(exact, LinearMixedModel(data, ordering="iterative").fit().result)


@pytest.mark.slow
def test_insteval() -> None:
    insteval = "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"
    _agree_on(solver.prepare(insteval, str(Path(__file__).parent / "data" / "InstEval.parquet")))


@pytest.mark.slow
@pytest.mark.parametrize("rows", [100_000, 1_000_000])
def test_generated_ehr(rows: int) -> None:
    _agree_on(solver.prepare(FORMULA, generate(rows, seed=20240601)))


def test_vector_first_term_is_refused_clearly() -> None:
    data = solver.prepare("y ~ acei + (acei | physician) + (1 | hospital)", generate(3_000, 1))
    with pytest.raises(solver.InputError, match="scalar first random-effects term"):
        LinearMixedModel(data, ordering="iterative")


@pytest.mark.parametrize(("kernels", "renumbered"), [(True, False), (False, False), (True, True)])
def test_chunked_gram_matches_the_plain_products(monkeypatch, kernels, renumbered) -> None:
    """A21 diag(w) A12 X over threads and chunks, with scipy's private kernels or the
    public products, with the columns and levels renumbered for locality or not (an empty
    level included), equals the two sparse products; in float32 to its precision."""
    from sparsemm.solver import gram

    monkeypatch.setattr(gram, "KERNELS", kernels and gram.KERNELS)
    monkeypatch.setattr(gram, "CHUNK_LEVELS", 7)
    rng = np.random.default_rng(4)
    A12 = sp.random(50, 9, density=0.3, format="csr", random_state=5).tolil()
    A12[3, :] = 0.0
    A12 = A12.tocsr()
    w, X = rng.uniform(0.5, 2.0, 50), rng.normal(size=(9, 4))
    expected = A12.T @ (w[:, None] * (A12 @ X))
    g = gram.ChunkedGram(A12, cols=rng.permutation(9) if renumbered else None)
    np.testing.assert_allclose(g(w, X), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.astype(np.float32)(w, X), expected, rtol=1e-5, atol=1e-5)


def test_cluster_blocks_of_the_gram_product_from_the_pair_map(data, monkeypatch) -> None:
    """The pair map, built in chunks of at most 50 pairs, gives the cluster blocks of
    A21 diag(w) A12 exactly as the dense product does."""
    from sparsemm.solver import iterative

    monkeypatch.setattr(iterative, "PAIR_CHUNK", 50)
    op = SchurOperator(data.cp.ZtZ, data.layout)
    within = iterative._within_pairs(op.A21, op.A22, op.clusters)
    w = np.random.default_rng(3).uniform(0.1, 1.0, op.n1)
    dense = (op.A21 @ sp.diags(w) @ op.A12).toarray()
    for cols, blocks in zip(op.clusters.batches, within.products(w)):
        expected = dense[cols[:, :, None], cols[:, None, :]]
        np.testing.assert_allclose(blocks, expected, rtol=1e-12, atol=1e-12)


def test_pair_chunks_cover_the_levels_within_the_budget() -> None:
    from sparsemm.solver.iterative import _pair_chunks

    counts = np.array([3, 1, 0, 5, 2, 2, 1])  # pairs per level: 9 1 0 25 4 4 1
    assert _pair_chunks(counts, 10) == [(0, 3), (3, 4), (4, 7)]
    assert _pair_chunks(counts, 1000) == [(0, 7)]


@pytest.mark.parametrize(
    ("errors", "tried", "kept"),
    [
        # falls of 14% or more (EHR 1M rows): all tried, the widest has the least cost
        ([1.41e-3, 1.22e-3, 0.97e-3, 0.82e-3, 0.47e-3], 5, 4),
        # the second gains 1% (EHR 10M rows): stop there, keep the first
        ([4.80e-3, 4.75e-3, 4.66e-3, 4.51e-3, 4.20e-3], 2, 0),
        # within SE_TARGET: the first such is kept at once
        ([5e-4, 1.5e-4, 1e-4, 8e-5, 6e-5], 2, 1),
    ],
)
def test_deflation_search_stops_when_wider_does_not_pay(data, errors, tried, kept) -> None:
    """The search's rule on given standard errors; the kept deflation's state is restored
    without computing it again."""
    from sparsemm.solver import iterative

    op = SchurOperator(data.cp.ZtZ, data.layout)
    op.n2 = 10**6  # wider than every deflation (this model's 156 columns are not)
    calls: list[tuple[int, int]] = []

    def fake_logdet(choice: tuple[int, int]) -> iterative.LogDet:
        k = len(calls)
        calls.append(choice)
        op.deflation, op.W, op._probes, op._inverse_probes = choice, k, k, k
        return iterative.LogDet(float(k), errors[k], 64, 5)

    op._logdet = fake_logdet  # type: ignore[method-assign]
    ld = op.logdet()
    assert calls == list(iterative.DEFLATIONS[:tried])
    assert op.deflation == iterative.DEFLATIONS[kept]
    assert (ld.value, op.W, op._probes, op._inverse_probes) == (kept, kept, kept, kept)
