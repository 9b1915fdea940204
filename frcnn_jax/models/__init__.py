"""Flax modules of the detector: backbones, RPN, RoI heads, Faster R-CNN."""
