"""Micro-batching: texts of concurrent requests wait in one bounded queue and are labelled together.

One worker thread owns the model. It takes the oldest request, then waits up to `max_wait_s` after that request
arrived for more, until `max_batch_size` texts are ready (a request's texts are never split; one larger than the
batch runs alone), and hands them to the backend as one call; the backend runs them exactly as evaluation does.
Under load the queue fills while the model works, so batches form without any waiting. A request that does not
fit in the queue is refused at once (`QueueFull`: 503 + Retry-After), and one that waits longer than its timeout
is given up (`TimeoutError`: 504) and skipped if the model has not started on it.
"""
from __future__ import annotations

import collections
import math
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence


class QueueFull(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full: retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The service is stopping: queued requests are answered 503."""


@dataclass
class Job:
    texts: List[str]
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    results: Optional[list] = None
    error: Optional[BaseException] = None
    cancelled: bool = False


class MicroBatcher:
    def __init__(self, label_batch: Callable[[List[str]], list], max_batch_size: int, max_wait_s: float,
                 max_queue: int, on_batch: Optional[Callable[[int, float], None]] = None):
        self.label_batch, self.on_batch = label_batch, on_batch
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._jobs: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._batch_seconds = 0.0  # moving average of a model call, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_texts(self) -> int:
        return self._queued

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def retry_after_s(self) -> int:
        """Seconds until the queue has probably drained (at least 1)."""
        batches = math.ceil((self._queued + 1) / self.max_batch_size)
        return max(1, math.ceil(batches * self._batch_seconds))

    def submit(self, texts: Sequence[str]) -> Job:
        job = Job(list(texts))
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the service is shutting down")
            if self._queued + len(job.texts) > self.max_queue:
                raise QueueFull(self.retry_after_s())
            self._jobs.append(job)
            self._queued += len(job.texts)
            self._cond.notify()
        return job

    def wait(self, job: Job, timeout_s: float) -> list:
        """The job's results; raises what the backend raised, or TimeoutError."""
        if not job.done.wait(timeout_s):
            with self._cond:
                if not job.done.is_set():
                    job.cancelled = True
                    if job in self._jobs:  # not started: drop it now, freeing its queue places
                        self._jobs.remove(job)
                        self._queued -= len(job.texts)
            if job.cancelled:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
        if job.error is not None:
            raise job.error
        return job.results

    def label(self, texts: Sequence[str], timeout_s: float) -> list:
        return self.wait(self.submit(texts), timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in progress; answer everything still queued with ShuttingDown."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    # ---------------------------------------------------------------------------------------- the worker
    def _next_batch(self) -> List[Job]:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                for job in self._jobs:
                    job.error = ShuttingDown("the service is shutting down")
                    job.done.set()
                self._jobs.clear()
                self._queued = 0
                return []
            deadline = self._jobs[0].arrived + self.max_wait_s
            while self._queued < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, n = [], 0
            while self._jobs and (not batch or n + len(self._jobs[0].texts) <= self.max_batch_size):
                job = self._jobs.popleft()
                self._queued -= len(job.texts)
                batch.append(job)
                n += len(job.texts)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                if self._stopping:
                    return
                continue
            texts = [text for job in batch for text in job.texts]
            start = time.perf_counter()
            try:
                results, error = self.label_batch(texts), None
            except Exception as err:  # answered to the requests (503 / 500), never kills the worker
                results, error = None, err
                if not getattr(err, "expected", False):
                    traceback.print_exc(file=sys.stderr)
            seconds = time.perf_counter() - start
            self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(len(texts), seconds)
            offset = 0
            for job in batch:
                if error is None:
                    job.results = results[offset:offset + len(job.texts)]
                    offset += len(job.texts)
                else:
                    job.error = error
                job.done.set()
