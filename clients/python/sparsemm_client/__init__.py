"""sparsemm's thin Python client (grpcio, protobuf and pyarrow only).

    from sparsemm_client import Client
    with Client("127.0.0.1:50051", token=os.environ.get("SPARSEMM_TOKEN")) as c:
        m = c.fit("Reaction ~ Days + (Days | Subject)", "sleepstudy.parquet")
        print(m.summary())
        m.fixef, m.varcorr, m.ranef()

Errors from the server are raised as ``SparsemmError`` (``code``, ``message``,
``field``).
"""

from .anova import format_anova
from .client import Client, ipc_chunks, model_spec
from .confint import format_confint
from .errors import SparsemmError
from .result import Anova, ConfidenceIntervals, FitResult, Job, JobError, Progress
from .summary import format_summary

__all__ = [
    "Anova",
    "Client",
    "ConfidenceIntervals",
    "FitResult",
    "Job",
    "JobError",
    "Progress",
    "SparsemmError",
    "format_anova",
    "format_confint",
    "format_summary",
    "ipc_chunks",
    "model_spec",
]
