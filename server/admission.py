"""Admission control by estimated memory (``--memory-budget-mb``).

A worker reads its job's data (the cross-products), estimates what the fit will hold
(``solver.memory.estimate``) and asks before fitting.  The manager answers against
the budget, the sum of the estimates of the fits admitted and still running:

    estimate > budget                 refused: RESOURCE_EXHAUSTED, naming both
    in use + estimate > budget        waits (first come, first served) until running
                                      fits end and free their share, or it is cancelled
    otherwise                         admitted; released when the job ends

The budget bounds the fits' own memory, not the workers' fixed footprint (about
150-250 MB each) nor the data pass before the estimate (bounded by its batches).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

MB = 2**20
WAIT_POLL_S = 0.05  # how often a waiting fit looks for a cancellation


class MemoryBudget:
    def __init__(self, budget_bytes: int | None) -> None:
        self.budget = budget_bytes
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}
        self._waiting: deque[str] = deque()

    @property
    def in_use(self) -> int:
        with self._cond:
            return sum(self._held.values())

    def refusal(self, nbytes: int, detail: str) -> str | None:
        """Why a fit of ``nbytes`` can never be admitted (None: it can)."""
        if self.budget is None or nbytes <= self.budget:
            return None
        return (f"the fit needs an estimated {nbytes / MB:,.0f} MB, more than the server's "
                f"memory budget of {self.budget / MB:,.0f} MB: {detail}")  # fmt: skip

    def acquire(
        self,
        job_id: str,
        nbytes: int,
        cancelled: Callable[[], bool],
        on_wait: Callable[[int], None],
    ) -> bool:
        """Reserve ``nbytes`` for ``job_id`` (a job's later call replaces its reservation),
        waiting for room; False if cancelled while waiting.  ``on_wait(in_use)`` is called
        once if the fit has to wait.  Call ``refusal`` first."""
        with self._cond:
            self._held.pop(job_id, None)
            self._waiting.append(job_id)
            told = False
            try:
                while not self._room(job_id, nbytes):
                    if cancelled():
                        return False
                    if not told:
                        on_wait(sum(self._held.values()))
                        told = True
                    self._cond.wait(WAIT_POLL_S)
                self._held[job_id] = nbytes
                return True
            finally:
                self._waiting.remove(job_id)
                self._cond.notify_all()

    def _room(self, job_id: str, nbytes: int) -> bool:
        if self.budget is None:
            return True
        first = self._waiting[0] == job_id  # no overtaking a larger fit that waits
        return first and sum(self._held.values()) + nbytes <= self.budget

    def release(self, job_id: str) -> None:
        with self._cond:
            if self._held.pop(job_id, None) is not None:
                self._cond.notify_all()
