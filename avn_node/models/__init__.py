"""AVN-net rebuilt on torchvision: femoral-head detector, multi-task classifier with CAM, training, evaluation."""
