"""What the decoding processes of :mod:`avn_node.analyse.ahead` run; it imports pydicom only, so they stay small."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset


def decompressed(path: str) -> Dataset:
    """The dataset of ``path`` with its pixel data decoded, same UIDs, in Explicit VR Little Endian."""
    ds = pydicom.dcmread(path)
    ds.decompress(generate_instance_uid=False)
    return ds


def ready() -> None:
    """A decoding process's first task: it has imported pydicom and the codecs' plugins by now."""
    pydicom.config.pixel_data_handlers  # noqa: B018 - loads the handler registry
