"""lme4-style text summary of a fit (``summary(lmer(...))``).

The formatting works on the JSON contract and lives with the thin client
(``sparsemm_client.summary``), so that ``sparsemm fit`` prints the same text
in-process and against a server; this module feeds it an in-process result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sparsemm.solver import FitResult
from sparsemm_client.summary import format_summary

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def residual_quantiles(scaled_resid: np.ndarray) -> list[float]:
    """Min, 1Q, median, 3Q, max of the scaled residuals (empty for no residuals)."""
    if not len(scaled_resid):
        return []
    return [float(v) for v in np.quantile(scaled_resid, QUANTILES)]


def summary_text(
    result: FitResult | Mapping[str, Any], data_name: str, scaled_resid: np.ndarray | None
) -> str:
    """The summary of a result or of its JSON contract (which may carry more, e.g. the
    Satterthwaite df and the ICC of ``sparsemm.cli_inference``)."""
    quantiles = None if scaled_resid is None else residual_quantiles(scaled_resid)
    contract = result.to_dict() if isinstance(result, FitResult) else result
    return format_summary(contract, data_name, quantiles)
