"""Renders the README's pictures of the returned secondary captures (``make preview-results``).

Generates a few phantom studies, reads the first AP with an AVN head through ``avn-node analyze`` and saves
its CAM capture and summary image as PNGs in docs/img/.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pydicom
from PIL import Image

from avn_node.analyse.analyzers import analyzer_kinds
from avn_node.config import ModelsSettings, Settings
from avn_node.ground_truth import FicatStage, View
from avn_node.models import DEFAULT_WEIGHTS
from avn_node.offline import analyze
from avn_node.phantom.generate import PhantomOptions, generate

OUT = Path(__file__).resolve().parent / "img"


def main(weights: Path = DEFAULT_WEIGHTS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, results = Path(tmp) / "data", Path(tmp) / "results"
        truth = generate(PhantomOptions(studies=8, seed=2027, shape_mix={"ap+fl": 1.0}), data, workers=2)
        ap = next(
            r for r in truth.radiographs
            if r.view == View.AP and any(h.stage in (FicatStage.III, FicatStage.IV) for h in r.heads)
        )  # fmt: skip
        kinds = analyzer_kinds(Settings(models=ModelsSettings(dir=weights)))
        run = analyze([data / Path(ap.file).parent], results, kinds)
        for path in run.written:
            ds = pydicom.dcmread(path)
            name = None
            if path.name.startswith("cam-") and path.name == f"cam-{ap.sop_instance_uid}.dcm":
                name = "cam-capture.png"
            elif path.name == "summary.dcm":
                name = "summary-capture.png"
            if name:
                image = Image.fromarray(ds.pixel_array)
                image.thumbnail((900, 900))
                image.save(OUT / name)
                print(OUT / name)
        print("truth:", [(h.side.value, h.stage.value, list(map(str, h.notes))) for h in ap.heads])


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
