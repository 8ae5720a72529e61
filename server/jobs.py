"""Jobs: a bounded queue in front of a fixed set of worker processes.

    submit -> QUEUED -> (a free worker) RUNNING -> SUCCEEDED | FAILED | CANCELLED

Every transition is written to the store first, then published to the job's
watchers.  A running job is cancelled by killing its worker process (a new one is
started in its place), so cancellation and deadlines stop a fit within the
manager's polling interval.  The queue is bounded: beyond ``max_queue`` waiting
jobs, ``submit`` refuses with RESOURCE_EXHAUSTED.  A worker's estimate of its fit's
memory is answered against the memory budget (``admission``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import grpc

from .admission import MemoryBudget
from .disclosure import DisclosurePolicy
from .errors import ServiceError
from .store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore
from .task import Task
from .worker import worker_main

log = logging.getLogger("sparsemm.server")
POLL_S = 0.05  # how often a busy slot looks for a cancellation
MAX_EVENTS = 1_000  # progress events kept per job for its watchers


class LiveJob:
    """A queued or running job: its record and the events its watchers have not seen."""

    def __init__(self, rec: JobRecord) -> None:
        self.rec = rec
        self.cond = threading.Condition()
        self.events: deque[tuple[int, tuple[Any, ...]]] = deque(maxlen=MAX_EVENTS)
        self.next_seq = 0
        self.done = False
        self.cancel_reason: str | None = None
        self.cancel_as = (CANCELLED, "CANCELLED")  # (state, error code) once stopped

    def publish(self, event: tuple[Any, ...]) -> None:
        with self.cond:
            self.events.append((self.next_seq, event))
            self.next_seq += 1
            self.cond.notify_all()

    def changed_since(self, seq: int) -> Callable[[], bool]:
        return lambda: self.next_seq > seq or self.done

    def since(self, seq: int) -> list[tuple[Any, ...]]:
        return [ev for s, ev in self.events if s >= seq]


class WorkerSlot:
    """One worker process and its pipe; restarted after a kill or a crash."""

    def __init__(self, ctx: Any, index: int, policy: DisclosurePolicy | None = None) -> None:
        self.ctx = ctx
        self.index = index
        self.policy = policy
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=worker_main,
            args=(child, self.policy),
            daemon=True,
            name=f"sparsemm-worker-{self.index}",
        )
        proc.start()
        child.close()
        self.proc, self.conn = proc, parent

    def ensure(self) -> None:
        if self.proc is None or not self.proc.is_alive():
            self.kill()
            self.start()

    def kill(self) -> int | None:
        proc, conn = self.proc, self.conn
        self.proc = self.conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        return proc.exitcode

    def stop(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(1)
        self.kill()


class JobManager:
    def __init__(
        self,
        store: JobStore,
        workers: int = 2,
        max_queue: int = 64,
        memory_budget_bytes: int | None = None,
        disclosure: DisclosurePolicy | None = None,
    ) -> None:
        self.store = store
        self.max_queue = max_queue
        self.memory = MemoryBudget(memory_budget_bytes)
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()  # guards the queue, _live and _closing
        self._queue: deque[LiveJob] = deque()
        self._live: dict[str, LiveJob] = {}
        self._busy: set[str] = set()
        self._closing = False
        self._slots = [WorkerSlot(self._ctx, i, disclosure) for i in range(workers)]
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        for rec in self.store.recover():  # queued before a restart: run them now
            live = LiveJob(rec)
            self._live[rec.job_id] = live
            self._queue.append(live)
        for slot in self._slots:
            slot.start()
            t = threading.Thread(
                target=self._slot_loop,
                args=(slot,),
                daemon=True,
                name=f"sparsemm-slot-{slot.index}",
            )
            t.start()
            self._threads.append(t)

    def stop_accepting(self) -> None:
        """No new jobs, and queued ones stay queued (in the store, for the next start)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def drain(self, deadline: float) -> None:
        """Wait until no job is running, or until ``deadline`` (time.monotonic())."""
        with self._cond:
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Kill what still runs (failing those jobs) and stop the workers."""
        self.stop_accepting()
        with self._cond:
            running = [self._live[j] for j in self._busy if j in self._live]
        reason = "interrupted: the server shut down while this job was running"
        for live in running:
            self._request_cancel(live, reason, (FAILED, "ABORTED"))
        for t in self._threads:
            t.join(10)
        for slot in self._slots:
            slot.stop()

    # ------------------------------------------------------------ the API

    def admit(self) -> None:
        """Raise unless a job submitted now would be queued."""
        with self._cond:
            self._admit()

    def _admit(self) -> None:
        if self._closing:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if len(self._queue) >= self.max_queue:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the job queue is full ({len(self._queue)} waiting); try again later",
            )

    def submit(self, owner: str, source_name: str, task: Task) -> JobRecord:
        rec = JobRecord(task.job_id, owner, QUEUED, source_name, task, time.time())
        with self._cond:
            self._admit()
            self.store.insert(rec)
            live = LiveJob(replace(rec))
            self._live[rec.job_id] = live
            self._queue.append(live)
            self._cond.notify_all()
        return rec

    def get(self, job_id: str, owner: str) -> JobRecord:
        rec = self.store.get(job_id, owner)
        if rec is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no job '{job_id}'", "job_id")
        return rec

    def cancel(
        self, job_id: str, owner: str | None, reason: str, wait: bool = True
    ) -> JobRecord | None:
        """Cancel a queued or running job (and wait for it to end); a finished job is left
        as it is.  ``owner`` None: any owner (the server's own calls)."""
        with self._cond:
            live = self._live.get(job_id)
            if live is None or (owner is not None and live.rec.owner != owner):
                return self.store.get(job_id, owner)
            queued = live in self._queue
            if queued:
                self._queue.remove(live)
        if queued:
            self._finish(live, CANCELLED, error=("CANCELLED", reason, ""))
        else:
            self._request_cancel(live, reason, wait=wait)
        return self.store.get(job_id)

    def _request_cancel(
        self,
        live: LiveJob,
        reason: str,
        cancel_as: tuple[str, str] = (CANCELLED, "CANCELLED"),
        wait: bool = True,
    ) -> None:
        with live.cond:
            if live.cancel_reason is None:
                live.cancel_reason, live.cancel_as = reason, cancel_as
            if wait:  # the slot kills the worker within POLL_S
                live.cond.wait_for(lambda: live.done, timeout=10)

    def watch(
        self, job_id: str, owner: str, is_active: Callable[[], bool]
    ) -> Iterator[tuple[str, Any]]:
        """("job", JobRecord) on changes of state, ("progress", event) while it runs,
        and last ("final", JobRecord) with the result or error."""
        with self._cond:
            live = self._live.get(job_id)
        if live is None or live.rec.owner != owner:
            yield ("final", self.get(job_id, owner))
            return
        with live.cond:
            seen, snapshot, done = live.next_seq, replace(live.rec), live.done
        yield ("job", snapshot)
        while not done:
            with live.cond:
                live.cond.wait_for(live.changed_since(seen), timeout=0.25)
                events, seen, done = live.since(seen), live.next_seq, live.done
            yield from events
            if not done and not is_active():
                return
        yield ("final", self.get(job_id, owner))

    # ------------------------------------------------------------ the workers

    def _slot_loop(self, slot: WorkerSlot) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                live = self._queue.popleft()
                self._busy.add(live.rec.job_id)
            try:
                self._run(slot, live)
            except Exception:  # a bug here must not take the slot down with it
                log.exception("job %s: the job manager failed", live.rec.job_id)
                slot.kill()
                error = ("INTERNAL", "internal error (see the server log)", "")
                self._finish(live, FAILED, error=error)
            finally:
                with self._cond:
                    self._busy.discard(live.rec.job_id)
                    self._cond.notify_all()

    def _run(self, slot: WorkerSlot, live: LiveJob) -> None:
        slot.ensure()
        job_id = live.rec.job_id
        self.store.started(job_id)
        with live.cond:
            live.rec.state, live.rec.started_unix = RUNNING, time.time()
        live.publish(("job", replace(live.rec)))
        assert slot.conn is not None
        try:
            slot.conn.send(live.rec.task)
        except OSError:
            pass  # the worker died: noticed below
        self._await(slot, live)

    def _await(self, slot: WorkerSlot, live: LiveJob) -> None:
        while True:
            if live.cancel_reason is not None:
                slot.kill()
                slot.start()
                state, code = live.cancel_as
                self._finish(live, state, error=(code, live.cancel_reason, ""))
                return
            msg = _receive(slot)
            if msg is None:
                if slot.proc is not None and slot.proc.is_alive():
                    continue
                status = slot.kill()
                slot.start()
                why = "killed (out of memory?)" if status == -9 else f"exit status {status}"
                error = ("INTERNAL", f"the worker process died: {why}", "")
                self._finish(live, FAILED, error=error)
                return
            if msg[0] in ("rows", "iteration"):
                live.publish(("progress", msg))
            elif msg[0] == "memory":
                self._admit_memory(slot, live, msg[1], msg[2])
            elif msg[0] == "done":
                self._finish(live, SUCCEEDED, result_json=msg[1], extras=msg[2])
                return
            elif msg[0] == "error":
                self._finish(live, FAILED, error=(msg[1], msg[2], msg[3]))
                return

    def _admit_memory(self, slot: WorkerSlot, live: LiveJob, nbytes: int, detail: str) -> None:
        """Answer a worker's estimate (``admission``): go, refuse, or wait for room first;
        nothing if the job is cancelled while it waits (the caller then kills it)."""
        memory, job_id = self.memory, live.rec.job_id
        refusal = memory.refusal(nbytes, detail)
        if refusal is not None:
            _send(slot, ("refuse", refusal))
            return

        def event(in_use: int, waiting: bool) -> None:
            live.publish(("progress", ("memory", nbytes, memory.budget or 0, in_use, waiting,
                                       detail)))  # fmt: skip

        def on_wait(in_use: int) -> None:
            log.info("job %s waits for memory (%d MB)", job_id, nbytes >> 20)
            event(in_use, True)

        if memory.acquire(job_id, nbytes, lambda: live.cancel_reason is not None, on_wait):
            event(memory.in_use, False)
            _send(slot, ("go",))

    def _finish(
        self,
        live: LiveJob,
        state: str,
        result_json: str | None = None,
        extras: dict[str, Any] | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> None:
        job_id = live.rec.job_id
        self.memory.release(job_id)
        self.store.finished(job_id, state, result_json, extras, error)
        with live.cond:
            live.rec.state, live.rec.finished_unix = state, time.time()
            if error is not None:
                live.rec.error_code, live.rec.error_message, live.rec.error_field = error
            live.done = True
            live.cond.notify_all()
        with self._cond:
            self._live.pop(job_id, None)
        spool = live.rec.task.spool
        if spool is not None:
            with contextlib.suppress(OSError):
                os.remove(spool)
        log.info("job %s %s", job_id, state.lower())


def _send(slot: WorkerSlot, msg: tuple[Any, ...]) -> None:
    if slot.conn is not None:
        with contextlib.suppress(OSError):
            slot.conn.send(msg)  # a dead worker is noticed by the caller's loop


def _receive(slot: WorkerSlot) -> tuple[Any, ...] | None:
    """The worker's next message, or None after POLL_S without one (or a dead pipe)."""
    conn = slot.conn
    if conn is None:
        return None
    try:
        if not conn.poll(POLL_S):
            return None
        msg = conn.recv()
    except (EOFError, OSError):
        time.sleep(POLL_S)  # let the process finish dying before is_alive() is asked
        return None
    return None if msg[0] == "ready" else msg
