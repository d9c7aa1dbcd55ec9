"""AVN-net rebuilt on torchvision: femoral-head detector, multi-task classifier with CAM, training, evaluation."""

from pathlib import Path

# The shipped demo weights (their model card: models/avn-demo-v3/model_card.md), relative to the checkout.
DEFAULT_WEIGHTS = Path("models/avn-demo-v3")
