"""sparsemm's solver: linear mixed models by penalized least squares on a sparse Cholesky.

The public API is small:

    fit(formula, data, reml=True, weights=None) -> LMMFit    (.result, .ranef(), .fitted())
    prepare(formula, data, weights=None)        -> ModelData  (the cross-products)
    LinearMixedModel(model_data, reml).objective(theta)        (evaluate without optimizing)

``data`` is a source name (see ``sources``), an Arrow table or a Source.  Errors in
what the user sent are raised as ``InputError`` naming the field at fault.
"""

from __future__ import annotations

import pyarrow as pa

from .errors import DataError, FormulaError, InputError
from .family import Family, family
from .glmm import GeneralizedLinearMixedModel, GLMMFit
from .lmm import IterationProgress, LinearMixedModel, LMMFit
from .model import ModelData, RowsProgress, prepare
from .optimize import Control
from .results import FitResult
from .sources import Source, open_source


def fit(
    formula: str,
    data: str | pa.Table | Source,
    reml: bool = True,
    weights: str | None = None,
    control: Control = Control(),
    progress: IterationProgress | None = None,
    rows_progress: RowsProgress | None = None,
) -> LMMFit:
    """Fit ``formula`` to ``data`` by REML (default) or ML, as lme4's ``lmer``."""
    model_data = prepare(formula, data, weights=weights, progress=rows_progress)
    return LinearMixedModel(model_data, reml).fit(control, progress)


__all__ = [
    "Control", "DataError", "Family", "FitResult", "GLMMFit", "GeneralizedLinearMixedModel",
    "family", "FormulaError", "InputError", "IterationProgress",
    "LMMFit", "LinearMixedModel", "ModelData", "RowsProgress", "Source", "fit",
    "open_source", "prepare",
]  # fmt: skip
