"""Fuzzing the ingest path (bytes → data set → store → pixels) with Hypothesis: a valid Part 10 radiograph with
bytes overwritten, cut or inserted — in the header more often than in the pixels — is either refused with a named
status or stored, and a stored file either decodes or fails with :class:`PixelDecodeError`; nothing else escapes.

In ``make test`` the run is short and reproducible (derandomised, ``AVN_FUZZ_EXAMPLES`` examples, default 500);
``make fuzz`` runs 50,000 new ones (``AVN_FUZZ_RANDOM=1``). A crash it finds is printed by Hypothesis as the
smallest failing input: add it to the bad-input corpus as a regression test.
"""

from __future__ import annotations

import os
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from sqlalchemy import select

from avn_node.config import Settings
from avn_node.models.pixels import PixelDecodeError, load_radiograph
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Refusal, Status
from avn_node.store.database import open_database
from avn_node.store.models import Instance

EXAMPLES = int(os.environ.get("AVN_FUZZ_EXAMPLES", "500"))
FRESH_INPUTS = os.environ.get("AVN_FUZZ_RANDOM") == "1"  # make fuzz: new inputs each run, not the fixed sequence
HEADER_BYTES = 700  # preamble, File Meta and the data set's attributes before Pixel Data (the seed's is ~600)


def _seed_file(path: Path) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, "1.2.826.0.1.3680043.10.511.88.3"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.511.88.1", "1.2.826.0.1.3680043.10.511.88.2"
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = "FUZZ", "Fuzz^Seed", "CR", "HIP"
    ds.SpecificCharacterSet, ds.StudyDate, ds.PatientOrientation = "ISO_IR 100", "20260101", ["L", "F"]
    ds.Rows = ds.Columns = 96
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (96, 96), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Receiver, bytes]:
    root = tmp_path_factory.mktemp("fuzz")
    config = Settings(node={"data_dir": root / "var"}, database={"url": f"sqlite:///{root / 'db.sqlite'}"},
                      security={"min_free_disk_mb": 1})  # fmt: skip
    config.tmp_dir.mkdir(parents=True)
    return Receiver(config, open_database(config.database.url)), _seed_file(root / "seed.dcm")


def _position(size: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, min(HEADER_BYTES, size - 1)), st.integers(0, size - 1))


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        where = draw(_position(len(data)))
        kind = draw(st.sampled_from(["overwrite", "cut", "insert"]))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[where : where + len(chunk)] = chunk
        elif kind == "cut":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        del data[draw(_position(len(data))) :]
    return bytes(data)


def test_mutated_files_are_refused_with_a_status_or_stored_and_their_pixels_decode_or_fail_cleanly(ingest):
    receiver, seed = ingest

    @settings(max_examples=EXAMPLES, derandomize=not FRESH_INPUTS, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        incoming = receiver.settings.tmp_dir / "fuzzed.dcm"
        incoming.write_bytes(data)
        outcome = receiver.store(incoming, "FUZZER")
        if isinstance(outcome, Refusal):
            assert outcome.status in (Status.CANNOT_UNDERSTAND, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS), outcome
            assert outcome.comment
            incoming.unlink()
            return
        assert outcome == Status.SUCCESS
        assert not incoming.exists()
        with receiver.sessions() as session:
            key = session.scalars(select(Instance.file_key).where(Instance.sha256 == sha256(data).hexdigest())).one()
        try:
            load_radiograph(receiver.settings.node.data_dir / key)
        except PixelDecodeError:
            pass

    check()
