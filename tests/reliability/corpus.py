"""The bad-input corpus: hostile and odd files a modality or a migration may send, each with the answer the node
must give (DIMSE status, a log line naming the reason, the final state).

Built from a valid uncompressed hip radiograph, a JPEG 2000 one and pydicom-data's real chest, tibia and CT files;
every item is its own patient and study, so its results can be told apart. Each file is written as a Part 10 file
whose File Meta carries what the C-STORE request says (``MediaStorageSOPClassUID``/``InstanceUID``, transfer
syntax) and whose data set follows as raw bytes: sent with pynetdicom's chunked sending, the bytes reach the node
unchanged, lies and damage included.

    python -m tests.reliability.corpus OUT_DIR AP.dcm J2K.dcm   # writes the corpus and prints its table
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
)

ROOT_UID = "1.2.826.0.1.3680043.10.511.77"


class Outcome:
    """Final states of an item, as the test reads them back."""

    REFUSED = "refused"  # a failure status; nothing stored
    IGNORED = "ignored"  # stored, not analysed (routing)
    ANALYSED = "analysed"  # stored, analysed, results sent
    NOT_ANALYSABLE = "not analysable"  # stored; the SR says the image could not be analysed
    NOT_SENT = "not sent"  # no presentation context accepted: the sender cannot even offer it


@dataclass(frozen=True)
class Item:
    """One corpus file and the node's expected answer."""

    name: str
    what: str
    status: int | None  # the DIMSE status the sender gets; None when nothing can be sent
    log: str  # a fragment of the node's log line about it
    outcome: str
    file: Path
    aet: str  # the calling AE title it is sent with (the log line names it)
    sop_instance_uid: str
    study_instance_uid: str


def _raw(ds: Dataset, transfer_syntax: str) -> bytes:
    """The data set's bytes in ``transfer_syntax`` (explicit or implicit VR little endian framing)."""
    ts = pydicom.uid.UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, ts.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def write_part10(path: Path, body: bytes, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
    """A Part 10 file: preamble, File Meta saying ``sop_class``/``sop_instance``/``transfer_syntax``, ``body``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = ROOT_UID + ".1"
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + body)


class _Builder:
    def __init__(self, out: Path, ap: Path, j2k: Path) -> None:
        self.out = out
        self.ap = ap
        self.j2k = j2k
        self.items: list[Item] = []

    def base(self, source: Path | str | None = None) -> Dataset:
        """A copy of ``source`` (the AP radiograph) as patient and study of their own."""
        ds = pydicom.dcmread(source or self.ap)
        n = len(self.items) + 1
        ds.PatientID = f"CORPUS-{n:02d}"
        ds.PatientName = f"Corpus^Item{n:02d}"
        ds.StudyInstanceUID = f"{ROOT_UID}.{n}.1"
        ds.SeriesInstanceUID = f"{ROOT_UID}.{n}.2"
        ds.SOPInstanceUID = f"{ROOT_UID}.{n}.3"
        ds.AccessionNumber = f"CORPUS{n:02d}"
        return ds

    def add(
        self,
        name: str,
        what: str,
        ds: Dataset,
        status: int | None,
        log: str,
        outcome: str,
        *,
        body: Callable[[bytes], bytes] = lambda b: b,
        sop_instance: str | None = None,
        sop_class: str | None = None,
        transfer_syntax: str | None = None,
    ) -> None:
        """Write ``ds`` (its bytes passed through ``body``) with File Meta from the request's point of view."""
        n = len(self.items) + 1
        ts = transfer_syntax or str(ds.file_meta.TransferSyntaxUID)
        sop = sop_instance or str(ds.get("SOPInstanceUID", f"{ROOT_UID}.{n}.3"))
        path = self.out / f"{n:02d}-{name}.dcm"
        encoded = _raw(ds, str(ds.file_meta.TransferSyntaxUID))
        write_part10(path, body(encoded), sop_class or str(ds.SOPClassUID), sop, ts)
        study = str(ds.get("StudyInstanceUID", ""))
        self.items.append(Item(name, what, status, log, outcome, path, f"CORPUS{n:02d}", sop, study))


def build(out: Path, ap: Path, j2k: Path) -> list[Item]:
    """Write the corpus into ``out`` from the uncompressed radiograph ``ap`` and the JPEG 2000 one ``j2k``."""
    out.mkdir(parents=True, exist_ok=True)
    b = _Builder(out, ap, j2k)
    ok, cannot, mismatch = 0x0000, 0xC000, 0xA900
    stored = "accepted for the radiograph analyzer"

    ds = b.base()
    b.add("valid", "a valid AP radiograph (the control)", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    b.add("truncated-in-pixels", "file cut at 60 %, inside Pixel Data", ds, ok, stored, Outcome.NOT_ANALYSABLE,
          body=lambda raw: raw[: int(len(raw) * 0.6)])  # fmt: skip

    ds = b.base()
    cut = _raw(ds, ds.file_meta.TransferSyntaxUID).find(b"\x10\x00\x10\x00")  # inside the header, at Patient's Name
    b.add("truncated-in-header", "file cut inside the header (in Patient's Name)", ds, cannot,
          "header cut short in (0010,0010)", Outcome.REFUSED, body=lambda raw: raw[: cut + 10])  # fmt: skip

    ds = b.base()
    b.add("garbage-header", "random bytes after the File Meta", ds, cannot, "header cut short",
          Outcome.REFUSED, body=lambda raw: np.random.default_rng(1).bytes(4096))  # fmt: skip

    ds = b.base()
    ds.PixelData = np.random.default_rng(2).bytes(len(ds.PixelData))
    b.add("garbage-pixels", "random bytes of the right length as Pixel Data", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    ds.PixelData = ds.PixelData[:1000]
    b.add("short-pixels", "Pixel Data of 1000 bytes for the stated size", ds, ok, stored, Outcome.NOT_ANALYSABLE)

    ds = b.base()
    ds.add_new(0x00280010, "LO", "abc")  # Rows as a string
    b.add("wrong-vr", "Rows (US) written as LO 'abc'", ds, ok, stored, Outcome.NOT_ANALYSABLE)

    ds = b.base()
    sop = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    b.add("no-sop-instance-uid", "no SOP Instance UID in the data set", ds, cannot, "SOP Instance UID is missing",
          Outcome.REFUSED, sop_instance=sop)  # fmt: skip

    ds = b.base()
    b.add("instance-mismatch", "data set's SOP Instance UID is not the request's", ds, cannot,
          "SOP Instance UID does not match the request", Outcome.REFUSED, sop_instance=ROOT_UID + ".404")  # fmt: skip

    ds = b.base()
    del ds.StudyInstanceUID
    b.add("no-study-uid", "no Study Instance UID", ds, cannot, "Study Instance UID is missing", Outcome.REFUSED)

    ds = b.base()
    ds.SOPInstanceUID = "../../../etc/passwd"
    b.add("uid-dot-dot", "SOP Instance UID '../../../etc/passwd'", ds, cannot, "SOP Instance UID is not a valid UID",
          Outcome.REFUSED)  # fmt: skip

    ds = b.base()
    ds.SeriesInstanceUID = "1.2/3.4"
    b.add("uid-slash", "Series Instance UID '1.2/3.4'", ds, cannot, "Series Instance UID is not a valid UID",
          Outcome.REFUSED)  # fmt: skip

    ds = b.base()
    ds.StudyInstanceUID = "1." + "2" * 198
    b.add("uid-200", "a 200-character Study Instance UID", ds, cannot, "Study Instance UID is not a valid UID",
          Outcome.REFUSED)  # fmt: skip

    ds = b.base()
    b.add("unsupported-syntax", "an unknown (private) transfer syntax", ds, None,
          "none of its transfer syntaxes is supported", Outcome.NOT_SENT,
          transfer_syntax=ROOT_UID + ".99")  # fmt: skip

    ds = b.base()
    b.add("lying-syntax", "native pixels, File Meta says JPEG 2000", ds, ok, stored, Outcome.NOT_ANALYSABLE,
          transfer_syntax=JPEG2000Lossless)  # fmt: skip

    ds = b.base(j2k)
    frame = bytearray(ds.PixelData)
    frame[len(frame) // 3 : len(frame) // 3 + 2000] = np.random.default_rng(3).bytes(2000)
    ds.PixelData = bytes(frame)
    b.add("corrupt-j2k", "2000 random bytes inside a JPEG 2000 codestream", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    ds.Rows = ds.Columns = 65535
    ds.PixelData = b"\x00\x00"
    b.add("claims-65535", "65535 x 65535 claimed, 2 bytes of pixels", ds, ok, stored, Outcome.NOT_ANALYSABLE)

    ds = b.base()
    ds.Rows = ds.Columns = 1
    ds.PixelData = b"\x00\x10"
    b.add("one-pixel", "a 1 x 1 image", ds, ok, stored, Outcome.NOT_ANALYSABLE)

    ds = b.base()
    grey = ds.pixel_array.astype(np.float32)
    rgb = np.repeat((255 * grey / grey.max()).astype(np.uint8)[..., None], 3, axis=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
        if keyword in ds:
            delattr(ds, keyword)
    b.add("rgb", "the radiograph stored as 8-bit RGB", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    ds.BitsStored, ds.HighBit = 20, 19
    b.add("bits-20-of-16", "Bits Stored 20 in 16 allocated", ds, ok, stored, Outcome.NOT_ANALYSABLE)

    ds = b.base(get_testdata_file("RG1_UNCR.dcm"))
    b.add("chest", "a real chest CR (Body Part CHEST)", ds, ok, "ignored: no analyzer selects", Outcome.IGNORED)

    ds = b.base(get_testdata_file("RG3_UNCR.dcm"))
    b.add("tibia", "a real distal tibia CR (Body Part EXTREMITY)", ds, ok, "ignored: no analyzer selects",
          Outcome.IGNORED)  # fmt: skip

    ds = b.base()
    ds.BodyPartExamined = "KNEE"
    b.add("knee", "a CR labelled Body Part KNEE", ds, ok, "ignored: no analyzer selects", Outcome.IGNORED)

    ds = b.base(get_testdata_file("CT_small.dcm"))
    b.add("ct-slice", "a CT slice", ds, ok, "ignored: no analyzer selects", Outcome.IGNORED)

    ds = b.base()
    sr = Dataset()
    sr.file_meta = ds.file_meta
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(sr, keyword, getattr(ds, keyword))
    sr.SOPClassUID = BasicTextSRStorage
    sr.Modality, sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "SR", "CONTAINER", "COMPLETE", "UNVERIFIED"
    b.add("sr", "a Basic Text SR", sr, ok, "ignored: no analyzer selects", Outcome.IGNORED)

    ds = b.base()
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    b.add("iso-2022-jp", "Specific Character Set ISO 2022 IR 87, a Japanese name", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds["PatientName"].value = "Müller^Jürgen".encode("latin-1")  # Latin-1 bytes where UTF-8 is declared
    b.add("latin1-as-utf8", "Latin-1 bytes under Specific Character Set ISO_IR 192 (UTF-8)", ds, ok, stored,
          Outcome.ANALYSED)  # fmt: skip

    ds = b.base()
    ds.SpecificCharacterSet = "ISO_IR 999"
    b.add("bogus-charset", "Specific Character Set ISO_IR 999", ds, ok, stored, Outcome.ANALYSED)

    ds = b.base()
    b.add("duplicate-a", "an instance, then ...", ds, ok, stored, Outcome.ANALYSED)
    ds.InstitutionName = "Elsewhere"
    b.add("duplicate-b", "... its SOP Instance UID again with other content", ds, ok,
          "same SOP Instance UID, different bytes; both kept", Outcome.ANALYSED)  # fmt: skip

    ds = b.base()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    b.add("class-mismatch", "data set says DX, File Meta and request say CR", ds, mismatch,
          "SOP Class UID does not match the request", Outcome.REFUSED,
          sop_class=ComputedRadiographyImageStorage)  # fmt: skip
    return b.items


def table(items: list[Item], got: dict[str, tuple[str, str]] | None = None) -> str:
    """The corpus as a Markdown table; with ``got`` (name → (status, outcome)) the measured answers."""
    lines = ["| file | status | log line names | final state |", "|---|---|---|---|"]
    for item in items:
        status = "not sent (no context)" if item.status is None else f"0x{item.status:04X}"
        outcome = item.outcome
        if got is not None:
            status, outcome = got[item.name]
        lines.append(f"| {item.what} | {status} | {item.log or '–'} | {outcome} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(build(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))))
