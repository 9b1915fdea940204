"""torchvision's Faster R-CNN configured like ours, for the side-by-side benchmarks.

Run by train_bench.py / infer_bench.py ``--torch`` and gpu_suite.py as
``PYTHON torch_detection.py SPEC.json BATCHES.npz`` (``bench_lib.run_torch``
writes both): it needs only torch, torchvision and numpy, never JAX, so
``--torch_python`` may name another environment. It prints its figures as JSON
after ``TORCH_MARKER``. The torchvision model takes our model's settings (the
fields of our ``FasterRCNN`` module in the spec): anchors, proposal counts,
sample counts, IoU thresholds, RoI op, head widths, number of classes. Its
transform is set to keep the benchmark's image size (scale 1). Differences that
remain: torchvision drops proposals under 1e-3 px (ours: ``rpn_min_size``), runs
per-image Python loops, and at inference runs the same 6000 -> 300 proposals.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from types import SimpleNamespace

import bench_timing
import numpy as np
import torch
import torch_profile
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import FasterRCNN, backbone_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

# Fail here, with torchvision's own message, where its compiled ops are missing.
torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)


class _RoIPool(MultiScaleRoIAlign):
    """``ops.roi_pool`` (the seed's RoIPool) behind FasterRCNN's ``box_roi_pool`` interface.

    A MultiScaleRoIAlign subclass only because FasterRCNN type-checks ``box_roi_pool``.
    """

    def __init__(self, output_size: int, spatial_scale: float):
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.pool_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, features, proposals, image_shapes):
        return torchvision.ops.roi_pool(
            features["0"], proposals, self.pool_size, self.spatial_scale
        )


def build_model(ours, image_size: tuple[int, int]) -> torch.nn.Module:
    """torchvision FasterRCNN with the settings of our ``FasterRCNN`` module ``ours``."""
    k = ours.num_classes + 1
    settings = dict(
        min_size=min(image_size), max_size=max(image_size),
        rpn_pre_nms_top_n_train=ours.rpn.pre_nms_top_n,
        rpn_post_nms_top_n_train=ours.rpn.post_nms_top_n,
        rpn_pre_nms_top_n_test=ours.test.pre_nms_top_n,
        rpn_post_nms_top_n_test=ours.test.post_nms_top_n,
        rpn_nms_thresh=ours.rpn.nms_iou, rpn_fg_iou_thresh=ours.rpn.positive_iou,
        rpn_bg_iou_thresh=ours.rpn.negative_iou, rpn_batch_size_per_image=ours.rpn.num_samples,
        rpn_positive_fraction=ours.rpn.positive_fraction,
        box_fg_iou_thresh=ours.roi.positive_iou, box_bg_iou_thresh=ours.roi.negative_iou[1],
        box_batch_size_per_image=ours.roi.num_samples,
        box_positive_fraction=ours.roi.positive_fraction,
        box_score_thresh=ours.test.score_threshold, box_nms_thresh=ours.test.nms_iou,
        box_detections_per_img=ours.test.max_detections,
    )  # fmt: skip
    p = ours.roi.output_size
    if ours.backbone == "vgg16":
        backbone = torchvision.models.vgg16(weights=None).features[:-1]  # conv5_3, stride 16
        backbone.out_channels = 512
        for weight in backbone[:10].parameters():  # conv1_1..conv2_2 frozen, as ours and the seed
            weight.requires_grad_(False)
        anchors = AnchorGenerator(
            sizes=(tuple(ours.anchors.sizes),),
            aspect_ratios=(tuple(ours.anchors.ratios),),
        )
        pool = (
            _RoIPool(p, 1 / 16)
            if ours.roi.op == "pool"
            else MultiScaleRoIAlign(["0"], p, sampling_ratio=2)
        )
    elif ours.backbone in ("resnet50_fpn", "resnet101_fpn"):
        backbone = backbone_utils.resnet_fpn_backbone(
            backbone_name=ours.backbone.removesuffix("_fpn"), weights=None, trainable_layers=3
        )
        anchors = AnchorGenerator(
            sizes=tuple((s,) for s in ours.anchors.sizes),
            aspect_ratios=(tuple(ours.anchors.ratios),) * 5,
        )
        pool = MultiScaleRoIAlign(["0", "1", "2", "3"], p, sampling_ratio=2)
    else:
        raise ValueError(f"no torchvision counterpart of model.backbone={ours.backbone!r}")
    hidden = tuple(ours.roi.hidden)
    if len(set(hidden)) != 1 or len(hidden) != 2:
        raise ValueError(f"torchvision's TwoMLPHead needs two equal widths, got {hidden}")
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=TwoMLPHead(backbone.out_channels * p * p, hidden[0]),
        box_predictor=FastRCNNPredictor(hidden[0], k),
        **settings,
    )


def _inputs(batch: dict, device) -> tuple[list, list]:
    """Our synthetic batch as torchvision's lists of CHW [0, 1] images and xyxy targets."""
    images, targets = [], []
    for i in range(batch["images"].shape[0]):
        height, width = batch["image_sizes"][i]  # torchvision pads by itself
        image = torch.from_numpy(batch["images"][i, :height, :width]).permute(2, 0, 1)
        image = image.float().div(255)
        mask = batch["gt_mask"][i]
        boxes = batch["gt_boxes"][i][mask][:, [1, 0, 3, 2]]  # (ymin, xmin, ...) -> (x1, y1, ...)
        images.append(image.to(device))
        targets.append(
            {
                "boxes": torch.from_numpy(np.ascontiguousarray(boxes)).to(device),
                "labels": torch.from_numpy(batch["gt_classes"][i][mask] + 1).long().to(device),
            }
        )
    return images, targets


def _matmul_rate(device, dtype, size: int | None) -> tuple[float, int]:
    n = size or (1024 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = bench_timing.time_steps(lambda i: a @ b, lambda out: _sync(device), warmup=2, steps=5)
    return 2 * n**3 / timing["median_s"], n


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(
    ours,
    batches: list[dict],
    image_size: tuple[int, int],
    *,
    compute_dtype: str,
    training: bool,
    warmup: int,
    steps: int,
    matmul_size: int | None = None,
    profile_steps: int = 0,
) -> dict:
    """Times torchvision's model on ``batches`` (our synthetic layout); a bench_lib result dict.

    ``ours`` has our FasterRCNN module's field names as attributes. ``compute_dtype``
    "bfloat16" runs under ``torch.autocast`` (float32 weights, as ours). ``profile_steps``:
    after the timed steps, profile this many more by op (``torch_profile.summarize``, in the
    result's ``"profile"``, with their median wall time as ``"step_ms"``).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if compute_dtype == "bfloat16" else None
    model = build_model(ours, image_size).to(device).train(training)
    inputs = [_inputs(b, device) for b in batches]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def run_step(i):
        images, targets = inputs[i % len(inputs)]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if not training:
                with torch.inference_mode():
                    return model(images)
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    start = time.perf_counter()
    run_step(0)
    _sync(device)
    first_step_s = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        run_step(1)
    timing = bench_timing.time_steps(
        run_step, lambda out: _sync(device), warmup=warmup, steps=steps
    )
    profile = _profile(run_step, device, profile_steps) if profile_steps else None
    rate, n = _matmul_rate(device, dtype or torch.float32, matmul_size)
    if device.type == "cuda":
        peak, peak_what = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        peak, peak_what = bench_timing.max_rss_bytes(), "process max RSS"
    return {
        **timing,
        "first_step_s": first_step_s,
        "peak_bytes": peak,
        "peak_what": peak_what,
        "flops": float(counter.get_total_flops()),
        "flops_what": "torch FlopCounterMode; nms/roi ops not counted",
        "matmul_flops_per_s": rate,
        "matmul_what": f"{dtype or torch.float32} {n}^3",
        "versions": f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"torchvision {torchvision.__version__}",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        **({"profile": profile} if profile else {}),
    }


def _profile(run_step, device, steps: int) -> dict:
    """``steps`` steps under torch.profiler: ``torch_profile.summarize`` and the steps' median."""
    walls = []
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as profiler:
        for i in range(steps):
            start = time.perf_counter()
            run_step(i)
            _sync(device)
            walls.append(time.perf_counter() - start)
    summary = torch_profile.summarize(profiler.events(), steps=steps)
    return {**summary, "step_ms": 1e3 * statistics.median(walls)}


def main(spec_path: str, batches_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    with np.load(batches_path, allow_pickle=False) as arrays:
        batches: dict[int, dict] = {}
        for key in arrays.files:
            index, name = key.split("/")
            batches.setdefault(int(index), {})[name] = arrays[key]
    result = run(
        SimpleNamespace(
            **{
                k: SimpleNamespace(**v) if isinstance(v, dict) else v
                for k, v in spec["model"].items()
            }
        ),
        [batches[i] for i in sorted(batches)],
        tuple(spec["image_size"]),
        compute_dtype=spec["compute_dtype"],
        training=spec["training"],
        warmup=spec["warmup"],
        steps=spec["steps"],
        matmul_size=spec["matmul_size"],
        profile_steps=spec.get("profile_steps", 0),
    )
    print(bench_timing.TORCH_MARKER + json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json BATCHES.npz (written by bench_lib.run_torch)")
    main(*sys.argv[1:])
