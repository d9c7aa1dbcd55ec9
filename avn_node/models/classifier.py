"""AVN-net's downstream classifier: one ResNet-18 trunk with view, side, Ficat-stage and note heads, and CAM.

The paper trains one ResNet-18 per task; sharing the trunk gives one forward pass for all tasks of all
crops of a case. Notes are multiplied by the stage prior (paper §III.C): each note's probability times the
summed probability of the stages it may accompany (DESIGN §5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from avn_node.ground_truth import NOTE_STAGES, NOTES, STAGES

VIEW_CLASSES = ("AP", "FL")
SIDE_CLASSES = ("L", "R")


def note_stage_matrix() -> torch.Tensor:
    """``(stages, notes)`` 0/1 matrix of DESIGN §5's note–stage table."""
    m = torch.zeros(len(STAGES), len(NOTES))
    for j, note in enumerate(NOTES):
        for i, stage in enumerate(STAGES):
            m[i, j] = float(stage in NOTE_STAGES[note])
    return m


@dataclass
class ClassifierOutput:
    """Logits per task and the last feature maps (for CAM)."""

    view: torch.Tensor
    side: torch.Tensor
    stage: torch.Tensor
    notes: torch.Tensor
    features: torch.Tensor

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Per-crop probabilities; notes already multiplied by the stage prior."""
        stage = self.stage.softmax(1)
        prior = stage @ note_stage_matrix().to(stage)
        return {
            "view": self.view.softmax(1),
            "side": self.side.softmax(1),
            "stage": stage,
            "notes": torch.sigmoid(self.notes) * prior,
        }


class AvnClassifier(nn.Module):
    """ResNet-18 (random init, one grey input channel) with four task heads on the pooled features.

    The stage logits are divided by ``stage_temperature`` (1 while training; fitted afterwards).
    """

    def __init__(self) -> None:
        super().__init__()
        trunk = resnet18(weights=None)
        trunk.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.trunk = nn.Sequential(*list(trunk.children())[:-2])
        width = trunk.fc.in_features
        self.view = nn.Linear(width, len(VIEW_CLASSES))
        self.side = nn.Linear(width, len(SIDE_CLASSES))
        self.stage = nn.Linear(width, len(STAGES))
        self.notes = nn.Linear(width, len(NOTES))
        # Temperature of the stage logits, fitted on the validation split after training (Guo et al. 2017).
        self.register_buffer("stage_temperature", torch.ones(()))

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        features = self.trunk(x)
        pooled = features.mean(dim=(2, 3))
        return ClassifierOutput(
            view=self.view(pooled),
            side=self.side(pooled),
            stage=self.stage(pooled) / self.stage_temperature,
            notes=self.notes(pooled),
            features=features,
        )

    def stage_cam(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class activation maps (Zhou et al. 2016) of the stage head: ``(N, h, w)`` scaled to [0, 1] per map.

        ``classes`` picks, per crop, the stage whose map is returned.
        """
        weights = self.stage.weight[classes]  # (N, C)
        cam = torch.einsum("nc,nchw->nhw", weights, features)
        cam = F.relu(cam)
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)
        return cam / peak[:, None, None]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), the paper's staging loss; mean over the batch."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()
