"""Read ahead: each accepted instance is decoded, and read by its analyzer, while its study waits out its idle
time; the case's job then takes the dataset and its reading instead of doing that work after completion.

The C-STORE handler itself never decodes (DESIGN §7): two loops of their own do. One decodes, woken by
``instance.accepted`` events; the other hands what was decoded to the analyzer (:meth:`Analyzer.read_ahead`), so
one instance is decoded while the one before is read. The codecs (OpenJPEG, CharLS, libjpeg) hold Python's GIL
while they decode, so a compressed instance is decoded in a spawned process and comes back in Explicit VR Little
Endian (pydicom's ``decompress``, same UIDs); an uncompressed one is read here. The classifier's crops come from
those full-resolution pixels as from any other.

Memory and CPU are bounded: while :data:`BUDGET_BYTES` of datasets are decoded and wait for their jobs, or more
than :data:`BURST` instances wait to be decoded, further instances are not read ahead, and one whose job has not
come within :data:`HOLD_SECONDS` is dropped. A job whose instance is not held (over budget, part of a burst,
undecodable, still being read, another process's with Celery) reads it itself as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.analyzers import Analyzer
from avn_node.events import NodeEvent
from avn_node.parallel import spawn_pool
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Instance, InstanceState

log = logging.getLogger("avn_node.analyse")
BUDGET_BYTES = 128 * 2**20  # pixel data and its decoded array, about 8 radiographs of 2048² at 16 bits
BACKLOG = 1024  # instances waiting to be decoded; beyond it they are read by their job
BURST = 8  # more waiting than this: a burst, whose backlog is left to the jobs (ingest keeps the CPU)
HOLD_SECONDS = 600.0


def decompressed(path: str) -> Dataset:
    """The dataset of ``path`` with its pixel data decoded (runs in the decoding process)."""
    ds = pydicom.dcmread(path)
    ds.decompress(generate_instance_uid=False)
    return ds


def _held_bytes(ds: Dataset) -> int:
    """What holding ``ds`` costs: its pixel data, and as much again for the decoded array."""
    return 2 * len(ds.PixelData)


def _ready() -> None:
    """The decoding process's first task: it has imported this module, pydicom and the codecs' plugins."""


class ReadAhead:
    """Datasets read ahead by file key, within :data:`BUDGET_BYTES`; :meth:`close` ends the decoding process."""

    def __init__(self, sessions: sessionmaker[Session], files: LocalFileStore, analyzers: Mapping[str, Analyzer],
                 budget: int = BUDGET_BYTES) -> None:  # fmt: skip
        self.sessions, self.files, self.analyzers, self.budget = sessions, files, analyzers, budget
        self.waiting: queue.Queue[str] = queue.Queue(BACKLOG)
        self.arrived = threading.Event()  # wakes the decoding loop
        self.decoded = threading.Event()  # wakes the reading loop
        self._decoded_queue: queue.Queue[tuple[str, str, Dataset]] = queue.Queue()  # key, analyzer, dataset
        self._held: dict[str, tuple[Dataset, int, float]] = {}  # key → dataset, bytes, when read
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the decoding process (in the background: it is ready a moment later)."""
        self._pool = spawn_pool(1)
        self._pool.submit(_ready)

    def on_event(self, event: NodeEvent) -> None:
        """Subscriber: queue each accepted instance (by SOP Instance UID)."""
        if event.kind == "instance.accepted":
            try:
                self.waiting.put_nowait(event.subject)
            except queue.Full:
                return  # its job reads the file
            self.arrived.set()

    def decode_next(self) -> bool:
        """Decode the next queued instance if the budget allows and pass it to :meth:`read_next`; False when
        none waited."""
        try:
            sop = self.waiting.get_nowait()
        except queue.Empty:
            return False
        with self.sessions() as session:
            row = session.execute(
                select(Instance.file_key, Instance.transfer_syntax_uid, Instance.analyzer)
                .where(Instance.sop_instance_uid == sop, Instance.state == InstanceState.ACCEPTED)
                .order_by(Instance.id.desc())
            ).first()  # fmt: skip
        if row is None or row.analyzer not in self.analyzers or self._bytes >= self.budget:
            return True
        if self.waiting.qsize() >= BURST:
            log.debug("instance %s not read ahead: %d more wait (a burst)", sop, self.waiting.qsize())
            return True
        try:
            ds = self._decoded(row.file_key, UID(row.transfer_syntax_uid).is_compressed)
        except BrokenProcessPool:
            log.warning("the decoding process died on instance %s; its job decodes it", sop)
            self._pool = None
            return True
        except Exception as exc:  # noqa: BLE001 - the job reads it again and reports the reason in the SR
            log.debug("instance %s not decoded ahead: %s: %s", sop, type(exc).__name__, exc)
            return True
        with self._lock:
            self._bytes += _held_bytes(ds)  # counted from now: decoded and waiting to be read is held too
        self._decoded_queue.put((row.file_key, row.analyzer, ds))
        self.decoded.set()
        return True

    def read_next(self) -> bool:
        """Let the analyzer read the next decoded instance, then hold it for its job; False when none waited."""
        try:
            key, analyzer, ds = self._decoded_queue.get_nowait()
        except queue.Empty:
            return False
        size = _held_bytes(ds)
        try:
            self.analyzers[analyzer].read_ahead(ds)
        except Exception as exc:  # noqa: BLE001 - the job reads it again, and fails there with the reason
            log.warning("instance %s not read ahead: %s: %s", key, type(exc).__name__, exc)
            with self._lock:
                self._bytes -= size
            return True
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, (_, _, at) in self._held.items() if now - at > HOLD_SECONDS]:
                self._bytes -= self._held.pop(stale)[1]
            self._held[key] = (ds, size, now)
        return True

    def _decoded(self, key: str, compressed: bool) -> Dataset:
        path = str(self.files.local_path(key))
        if not compressed:
            return pydicom.dcmread(path)
        if self._pool is None:
            self.start()
        assert self._pool is not None
        return self._pool.submit(decompressed, path).result()

    def take(self, key: str) -> Dataset | None:
        """The dataset of ``key`` read ahead, no longer held; None when it is not held."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is None:
                return None
            self._bytes -= held[1]
            return held[0]

    def close(self) -> None:
        """End the decoding process."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
