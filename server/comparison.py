"""A likelihood-ratio comparison job inside a worker process (``CompareTask``).

Both models are read first (cross-products only); then each is fitted by ML, or, when
it is a finished job's ML fit, taken as that job kept it; the test itself is
``solver.inference.compare`` (the core of ``likelihood_ratio``).
"""

from __future__ import annotations

import json
from typing import Any

from ..solver.errors import InputError
from ..solver.results import json_safe
from .disclosure import DisclosurePolicy
from .fitting import Channel, estimate, model, prepare
from .task import CompareTask, FitTask

MODEL_FIELDS = ("formula", "weights", "family", "link")


def _prepare(fit: FitTask, channel: Channel, i: int, policy: DisclosurePolicy | None) -> Any:
    try:
        data = prepare(fit, channel)
        if policy is not None:
            policy.check_design(data)  # the test itself reveals only aggregates
        return data
    except InputError as exc:  # name the model at fault, as the request does
        if exc.field in MODEL_FIELDS:
            exc.field = f"models[{i}].{exc.field}"
        raise


def run_comparison(
    task: CompareTask, channel: Channel, policy: DisclosurePolicy | None = None
) -> tuple[str, dict[str, Any]]:
    from sparsemm.solver import inference

    data = [
        None if kept else _prepare(fit, channel, i, policy)
        for i, (fit, kept) in enumerate(zip(task.fits, task.stored))
    ]
    memory = [(i, estimate(fit, d)) for i, (fit, d) in enumerate(zip(task.fits, data)) if d]
    if memory:  # both fits' memory is held until the test
        detail = "; ".join(f"model {i}: {m.describe()}" for i, m in memory)
        channel.admit(sum(m.total_bytes for _, m in memory), detail)
    lines = []
    for fit, kept, prepared in zip(task.fits, task.stored, data):
        if kept:
            result = json.loads(kept)
            lines.append((inference.stored_line(result), int(result["nobs"])))
        else:
            res = model(fit, prepared).fit(progress=channel.iteration).result
            lines.append((inference.model_line(res), res.nobs))
    (a, na), (b, nb) = lines
    lrt = inference.compare(a, b, (na, nb))
    return json.dumps(json_safe(lrt.to_dict())), {}
