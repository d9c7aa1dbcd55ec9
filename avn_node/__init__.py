"""avn-node: reads hip radiographs for avascular necrosis of the femoral head. Not for clinical use."""

__version__ = "0.1.0"
