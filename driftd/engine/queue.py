"""Keyed work queue (engine): a resource is never reconciled twice at the same time.

Pipeline position: scans and events *enqueue keys*; workers take a key, reconcile it
(observe → diff → plan → act), and report success or failure.  Keys are de-duplicated;
a key added while it is being processed is re-queued once it is done; a failed key
comes back after exponential backoff.  Level-based: a key carries no payload, every
reconcile re-reads real state.  An *urgent* key (a drift at or past its deadline) is taken
before every other ready key.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from driftd.engine.clock import Clock, SystemClock


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: base * 2**(failures-1), capped."""

    base_seconds: float = 1.0
    max_seconds: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * (2 ** max(0, failures - 1))))


class KeyedQueue:
    def __init__(self, *, clock: Clock | None = None, backoff: Backoff | None = None) -> None:
        self._clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []
        self._urgent_heap: list[tuple[float, int, str]] = []
        self._urgent: set[str] = set()
        self._ready_at: dict[str, float] = {}
        self._processing: set[str] = set()
        self._dirty: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._seq = itertools.count()
        self._closed = False

    def __len__(self) -> int:
        with self._cv:
            return len(self._ready_at)

    @property
    def processing(self) -> frozenset[str]:
        with self._cv:
            return frozenset(self._processing)

    def failures(self, key: str) -> int:
        with self._cv:
            return self._failures.get(key, 0)

    def add(self, key: str, delay: float = 0.0, *, urgent: bool = False) -> None:
        """Queue ``key`` (no-op if already queued sooner); deferred if it is in flight.

        ``urgent`` keys go before every other ready key (and stay urgent until taken).
        """
        with self._cv:
            if self._closed:
                return
            at = self._clock.monotonic() + delay
            if urgent:
                self._urgent.add(key)
            if key in self._processing:
                self._dirty[key] = min(at, self._dirty.get(key, at))
                return
            current = self._ready_at.get(key)
            if current is not None and current <= at:
                if urgent:
                    heapq.heappush(self._urgent_heap, (current, next(self._seq), key))
                    self._cv.notify()
                return
            self._ready_at[key] = at
            heapq.heappush(self._urgent_heap if key in self._urgent else self._heap, (at, next(self._seq), key))
            self._cv.notify()

    def _peek(self, heap: list[tuple[float, int, str]], urgent: bool) -> tuple[float, str] | None:
        while heap:
            at, _, key = heap[0]
            if self._ready_at.get(key) != at or (urgent and key not in self._urgent):  # superseded entry
                heapq.heappop(heap)
                continue
            return at, key
        return None

    def _pop_ready(self) -> tuple[str | None, float | None]:
        now = self._clock.monotonic()
        first = self._peek(self._urgent_heap, True)
        normal = self._peek(self._heap, False)
        urgent_ready = first is not None and first[0] <= now
        if not urgent_ready and normal is not None and (first is None or normal[0] < first[0]):
            first = normal
        if first is None:
            return None, None
        at, key = first
        if at > now:
            return None, at - now
        heapq.heappop(self._urgent_heap if first is not normal else self._heap)
        del self._ready_at[key]
        self._urgent.discard(key)
        self._processing.add(key)
        return key, None

    def get(self, timeout: float | None = None) -> str | None:
        """Next ready key, or None on timeout or shutdown."""
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        with self._cv:
            while not self._closed:
                key, wait = self._pop_ready()
                if key is not None:
                    return key
                if deadline is not None:
                    left = deadline - self._clock.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cv.wait(wait)
            return None

    def next_ready_in(self) -> float | None:
        """Seconds until the next queued key is ready (0 if one is), None when empty."""
        with self._cv:
            now = self._clock.monotonic()
            times = [e[0] for e in (self._peek(self._urgent_heap, True), self._peek(self._heap, False)) if e is not None]
            return max(0.0, min(times) - now) if times else None

    def done(self, key: str, *, failed: bool = False, retry: bool = True, urgent: bool = False) -> float | None:
        """Finish ``key``.  A failure re-queues it after backoff (returned) when ``retry``, urgent if ``urgent``."""
        with self._cv:
            self._processing.discard(key)
            if urgent and failed and retry:
                self._urgent.add(key)
            dirty_at = self._dirty.pop(key, None)
            delay: float | None = None
            if failed:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                if retry:
                    delay = self.backoff.delay(n)
            else:
                self._failures.pop(key, None)
        if delay is not None:
            self.add(key, delay)
        elif dirty_at is not None:
            self.add(key, max(0.0, dirty_at - self._clock.monotonic()))
        return delay

    def forget(self, keep: frozenset[str] | set[str], *, spare: Callable[[str], bool] | None = None) -> int:
        """Drop the failure counts and urgency of keys that are neither queued nor in flight nor in ``keep``
        (the keys the last scan saw or that have open records) nor ``spare``d (a target that is down):
        retention, so rotating names do not grow the queue.  Returns how many keys were forgotten."""
        with self._cv:
            live = set(keep)
            live.update(self._ready_at, self._processing, self._dirty)
            if spare is not None:
                live.update(k for k in (*self._failures, *self._urgent) if spare(k))
            gone = [k for k in self._failures if k not in live]
            for k in gone:
                del self._failures[k]
            self._urgent &= live
            return len(gone)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def drain(self, handler: Callable[[str], bool], *, max_failures: int) -> None:
        """Process keys in this thread until none is left (``driftd run --once``).

        ``handler`` returns True on success.  A key that failed ``max_failures`` times
        stops being retried in this pass (failures of earlier passes do not count);
        waiting for backoff uses the injected clock.
        """
        failed_here: dict[str, int] = {}
        while True:
            wait = self.next_ready_in()
            if wait is None:
                return
            if wait > 0:
                self._clock.sleep(wait)
            key = self.get(timeout=0)
            if key is None:
                continue
            ok = handler(key)
            if not ok:
                failed_here[key] = failed_here.get(key, 0) + 1
            retry = not ok and failed_here[key] < max_failures
            self.done(key, failed=not ok, retry=retry)
