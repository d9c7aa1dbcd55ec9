"""Named training profiles: what ``avn-node train --profile`` and ``make weights`` run."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    """Sizes, epochs and optimiser settings of one training run."""

    name: str
    detector_size: int
    detector_epochs: int
    detector_batch: int
    detector_lr: float
    crop_size: int
    classifier_epochs: int
    classifier_batch: int
    classifier_lr: float
    crops_per_head: int
    weight_decay: float = 5e-4
    plateau_patience: int = 2
    detector_patience: int = 5
    validation_share: float = 0.1

    def to_json(self) -> dict[str, object]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    # 2 CPU cores in ≤ 90 min with the phantom set of `make weights`: a 256² detector input and 160² crops.
    "cpu": Preset(
        name="cpu",
        detector_size=256,
        detector_epochs=24,
        detector_batch=16,
        detector_lr=1e-3,
        crop_size=160,
        classifier_epochs=16,
        classifier_batch=32,
        classifier_lr=1e-4,
        crops_per_head=5,
    ),
    # `make weights` on 2 CPU cores in ≤ 90 min: each demo version starts from the one before (``--init-from``)
    # and adapts both networks to the phantom's styles; fewer epochs and crops than "cpu", lower detector rate.
    "cpu-finetune": Preset(
        name="cpu-finetune",
        detector_size=256,
        detector_epochs=14,
        detector_batch=16,
        detector_lr=5e-4,
        crop_size=160,
        classifier_epochs=9,
        classifier_batch=32,
        classifier_lr=1e-4,
        crops_per_head=3,
        plateau_patience=1,
        detector_patience=3,
    ),
    # The paper's classifier input (224²) and all five scales per head per epoch; for a GPU.
    "gpu": Preset(
        name="gpu",
        detector_size=320,
        detector_epochs=60,
        detector_batch=32,
        detector_lr=1e-3,
        crop_size=224,
        classifier_epochs=40,
        classifier_batch=64,
        classifier_lr=1e-4,
        crops_per_head=5,
    ),
    # Seconds, for tests: proves the loop, not the model.
    "smoke": Preset(
        name="smoke",
        detector_size=128,
        detector_epochs=3,
        detector_batch=8,
        detector_lr=1e-3,
        crop_size=64,
        classifier_epochs=4,
        classifier_batch=16,
        classifier_lr=1e-3,
        crops_per_head=1,
    ),
}
