"""Cost of one objective evaluation on the iterative path, and its log-determinant error.

    python -m benchmarks.iterative_step --rows 1000000 [--exact] [--evals 3]

Generates (or reuses) the synthetic EHR table of ``--rows`` rows in the benchmark cache,
reads it, builds the iterative PLS (setup: the cluster preconditioner's pair map) and
times ``--evals`` evaluations of the REML criterion and its gradient near the generating
parameters, as the fit makes them (L-BFGS-B, BLAS threads as the fit limits them):
seconds for the objective and for the gradient's traces, PCG iterations, the Monte Carlo
standard error of log|L|^2 and, with ``--exact`` (sizes where the dense Schur path still
runs), the exact log|L|^2 at the same theta.  Peak RSS of this process at the end
(ru_maxrss).  The first evaluation also chooses the deflation (several log-determinants).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.ehr_generator import FORMULA, write
from benchmarks.problems import CACHE, EHR_SEED
from sparsemm import solver
from sparsemm.solver.lmm import LinearMixedModel
from sparsemm.solver.pls_iterative import IterativePLS

THETA = np.array([0.71, 0.28, 0.41, 0.04, 0.21])  # near the generating values


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--evals", type=int, default=3)
    ap.add_argument("--exact", action="store_true")
    args = ap.parse_args(argv)
    path = CACHE / f"ehr_{args.rows}_seed{EHR_SEED}.parquet"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        write(args.rows, path, seed=EHR_SEED)
    t0 = time.perf_counter()
    data = solver.prepare(FORMULA, str(path))
    t1 = time.perf_counter()
    model = LinearMixedModel(data, ordering="iterative")
    t2 = time.perf_counter()
    assert isinstance(model.pls, IterativePLS)
    print(f"rows {args.rows:,}  q {data.layout.q:,}  read {t1 - t0:.1f} s  setup {t2 - t1:.1f} s")
    with threadpool_limits(model.pls.factor.blas_limits()):
        for k in range(args.evals):
            _evaluate(model, k)
    if args.exact:
        exact = LinearMixedModel(data, ordering="schur")
        start = time.perf_counter()
        ref = exact.solve(THETA * (1.0 + 0.02 * (args.evals - 1)))
        print(f"exact logdet {ref.logdet_L:.4f} ({time.perf_counter() - start:.1f} s)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB")


def _evaluate(model: LinearMixedModel, k: int) -> None:
    theta = THETA * (1.0 + 0.02 * k)
    start = time.perf_counter()
    sol = model.solve(theta)
    mid = time.perf_counter()
    model.objective_gradient(theta)
    end = time.perf_counter()
    op = model.pls.factor
    print(
        f"eval {k}: {end - start:.2f} s (objective {mid - start:.2f} s, gradient "
        f"{end - mid:.2f} s)  objective {model.criterion(sol):.4f}  "
        f"logdet {sol.logdet_L:.4f} +/- {sol.logdet_se:.2g}  cg {op.cg_iterations}"
    )


if __name__ == "__main__":
    main()
