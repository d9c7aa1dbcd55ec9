"""The femoral-head detector: torchvision SSDlite with a MobileNetV3-Large backbone, one class, random init."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor, _normal_init

FEMORAL_HEAD_LABEL = 1
"""Class index of *femoral head*; 0 is background."""


def build_detector(size: int) -> SSD:
    """SSDlite-MobileNetV3 for ``size``² letterboxed grey images, as torchvision's ``ssdlite320`` but any size.

    No hub weights: the backbone is initialised as torchvision does without pretraining (reduced tail).
    """
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=True)
    _normal_init(backbone)
    extractor = _mobilenet_extractor(backbone, 6, norm_layer)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(extractor, (size, size))
    return SSD(
        extractor,
        anchors,
        (size, size),
        num_classes=2,
        head=SSDLiteHead(out_channels, anchors.num_anchors_per_location(), 2, norm_layer),
        score_thresh=0.05,
        nms_thresh=0.3,
        detections_per_img=10,
        topk_candidates=100,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def to_detector_input(letterboxed: torch.Tensor) -> torch.Tensor:
    """A ``(1, S, S)`` grey letterbox as the 3-channel image the backbone expects."""
    return letterboxed.expand(3, -1, -1)
