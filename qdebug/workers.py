"""One process-wide pool of worker threads, shared by every stage that runs side by side.

onnxruntime runs and numpy reductions release the GIL, so threads give real parallelism. Every
onnxruntime session has a fixed intra-op thread count (SESSION_THREADS, ANALYSIS_THREADS) and the
parallelism comes from running sessions and samples at the same time: on a small machine that keeps the
cores busier than one session split over all cores, whose threads wait on each other at every node
(docs/benchmarks.md), and it makes the numbers independent of the machine's core count (onnxruntime's
kernels may partition a sum differently with more threads, and a last-bit difference can flip a
quantization rounding step; docs/simulator.md).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

CORES = os.cpu_count() or 1
WORKERS = max(1, min(4, CORES))  # more threads than this only add contention for memory bandwidth
_POOL: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """The shared pool (created on first use; its threads idle between tasks)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="qdebug")
    return _POOL


# intra-op threads of every qdebug onnxruntime session: 1 keeps results identical on every machine
SESSION_THREADS = 1
# except compare's analysis graph (float chain + isolated clones), the longer of the two runs that go side by
# side: 2 threads, always 2 (so results still do not depend on the machine), let it take the core the
# cumulative run leaves idle when it finishes first (-0.45 s on 8 benchmark images, docs/benchmarks.md)
ANALYSIS_THREADS = 2


def ordered_map(fn: Callable[[T], R], items: Iterable[T], window: int = WORKERS) -> Iterator[R]:
    """`map(fn, items)` on the pool, at most `window` items in flight, results in input order.

    The window bounds memory: each item in flight may hold a whole sample's activations. Call it from
    the main thread only: a pool task that waits on the pool could wait forever.
    """
    ex = pool()
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:  # an error (or an abandoned generator): drop what has not started
            f.cancel()
        for f in pending:
            if not f.cancelled():
                f.exception()  # wait, so no worker still holds the caller's data
