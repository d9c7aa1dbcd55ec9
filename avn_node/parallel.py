"""Process pools that are safe after torch has run: ``spawn`` children, one thread each, or no pool at all.

A ``fork`` child inherits a copy of torch's (or OpenMP's) thread-pool locks held by threads that do not exist
in the child, and can wait on them forever; a spawned child starts a fresh interpreter instead.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _single_threaded() -> None:
    """Pool initializer: the workers already use every core between them, so each computes on one thread."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:  # imported with the parent's main module, before the variables took effect
        sys.modules["torch"].set_num_threads(1)


def process_map(fn: Callable[[T], R], jobs: Iterable[T], workers: int, chunksize: int = 1) -> Iterator[R]:
    """``map(fn, jobs)`` in order, over ``workers`` spawned processes; in this process when ``workers <= 1``."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with spawn_pool(workers) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned, single-threaded processes."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_single_threaded)
