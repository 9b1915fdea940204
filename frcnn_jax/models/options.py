"""The detector's options, grouped as ``config.model`` groups them: anchors, rpn, roi, test.

Each group is a frozen dataclass whose fields are the keys of its config section
(``--config.model.rpn.positive_iou=0.6`` sets ``RPNOptions.positive_iou``). Defaults are the
seed's (simple-faster-rcnn-pytorch) VGG16 values; configs/default.py copies them from here, so
they live in one place. IoU thresholds are spelled ``*_iou`` everywhere.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AnchorOptions:
    """Anchor boxes. sizes: anchor side ``sqrt(h * w)`` in input pixels. One feature map
    (VGG16, small): every size at every position (the seed: 16 x (8, 16, 32)); FPN: one size
    per pyramid level, finest first. ratios: height / width."""

    sizes: tuple[float, ...] = (128.0, 256.0, 512.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # True: training replaces sizes (and ratios, where that raises recall) with anchors fitted
    # to the training boxes at startup (frcnn_jax.training.anchor_setup); the run's workdir
    # records the chosen values. The model itself reads sizes and ratios only.
    auto: bool = False


@dataclasses.dataclass(frozen=True)
class RPNOptions:
    """Region proposal network: head width, anchor sampling (AnchorTargetCreator) and the
    training-time proposals (ProposalCreator). Test-time proposal counts are in ``test``."""

    channels: int = 512
    num_samples: int = 256
    positive_fraction: float = 0.5
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    nms_iou: float = 0.7
    # Proposals with a side below min_size are dropped (training and test). min_size_units:
    # "original" (the seed: original-image pixels, i.e. min_size x the image's resize factor,
    # the batch's "scales") or "resized" (pixels of the network's input).
    min_size: float = 16.0
    min_size_units: str = "original"
    pre_nms_top_n: int = 12000
    post_nms_top_n: int = 2000
    # Anchors the RPN trains: "ignore_crossing" (the seed: only anchors fully inside the
    # image) or "train_crossing" (torchvision, detectron2: anchors crossing the border too;
    # only anchors centred in the padding are left out). Anchors centred in the padding never
    # make proposals, whatever the rule. frcnn_jax.anchors.trainable_anchors.
    border_rule: str = "ignore_crossing"


@dataclasses.dataclass(frozen=True)
class RoIOptions:
    """RoI head: pooling, hidden layers and roi sampling (ProposalTargetCreator)."""

    op: str = "pool"  # "pool" (the seed's RoIPool) or "align"; FPN backbones always align
    output_size: int = 7
    hidden: tuple[int, ...] = (4096, 4096)
    # 3x3 convolutions on the pooled rois before the fc layers (models.heads.RoIHead), and
    # their norm: "" or "group_norm". detectron2's GN head: (256,) * 4, hidden (1024,).
    conv_channels: tuple[int, ...] = ()
    norm: str = ""
    num_samples: int = 128
    positive_fraction: float = 0.25
    positive_iou: float = 0.5
    negative_iou: tuple[float, float] = (0.0, 0.5)  # background: max IoU in [lo, hi)
    delta_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    # Box regression loss: smooth L1 with this beta (losses.smooth_l1_beta). 1.0: the seed
    # (sigma 1); 1/9: torchvision's fastrcnn_loss; 0.0: detectron2's L1.
    box_loss_beta: float = 1.0
    # FPN backbones: the level each roi pools from, floor(k0 + log2(sqrt(h * w) / s0)) (FPN
    # paper, eq. 1) with s0 = canonical_size input pixels and k0 = canonical_level: 224 and 4
    # (torchvision, detectron2) are ImageNet's object scale in 800-1333 px inputs, so a
    # 224 x 224 roi pools from P4 and everything under 112 px from P2.
    canonical_size: float = 224.0
    canonical_level: int = 4


@dataclasses.dataclass(frozen=True)
class TestOptions:
    """Inference: proposals kept before and after the RPN's NMS, then per-class
    post-processing (score threshold, class NMS, detections per image)."""

    __test__ = False  # not a pytest test class

    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    score_threshold: float = 0.05
    nms_iou: float = 0.3  # per-class NMS: 0.3 the seed's VGG16; 0.5 torchvision, detectron2
    max_detections: int = 100


# config.model section -> (FasterRCNN field, options class).
SECTIONS = {
    "anchors": ("anchor_options", AnchorOptions),
    "rpn": ("rpn_options", RPNOptions),
    "roi": ("roi_options", RoIOptions),
    "test": ("test_options", TestOptions),
}


def field_names(options_class) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(options_class))
