"""The items of gpu_suite.py: what each one runs, and the table they make.

Shape shorthand: B batch, H, W image size.

``python gpu_suite_items.py SPEC_JSON`` runs one of our items (gpu_suite.py starts it
in a subprocess) and prints its result as JSON after :data:`MARKER`; torchvision's
items run through ``bench_lib.run_torch``. TensorFlow and TFDS cannot be imported
in either process (:func:`forbid_tensorflow`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import json
import sys
import time

import bench_timing

MARKER = "GPU_SUITE_RESULT "
FORBIDDEN = ("tensorflow", "tensorflow_datasets")

# model key -> (config module, image (H, W), object classes)
MODELS = {
    "vgg16": ("configs.voc", (600, 1000), 20),
    "resnet50_fpn": ("configs.coco_resnet50_fpn", (800, 1333), 80),
}
# --tiny: the small backbone for both keys, RoIPool for "vgg16" and RoIAlign for the other.
TINY_SIZE = (64, 64)
TINY_ROI_OPS = {"vgg16": "pool", "resnet50_fpn": "align"}


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ModuleNotFoundError(f"the GPU suite must not import {name}", name=name)
        return None


def forbid_tensorflow() -> None:
    """Makes any import of TensorFlow or TFDS fail, as on a machine without them."""
    if any(name.split(".")[0] in FORBIDDEN for name in sys.modules):
        raise RuntimeError("TensorFlow was imported before the GPU suite started")
    if not any(isinstance(finder, _NoTensorFlow) for finder in sys.meta_path):
        sys.meta_path.insert(0, _NoTensorFlow())


def plan(*, tiny, batch_sizes, models, modes, impls, steps, warmup, torch_python) -> list[dict]:
    """Item specs in priority order: batch sizes as given, then model, mode, implementation."""
    sizes = [int(b) for b in (batch_sizes or ("2" if tiny else "8,16,1")).split(",")]
    for flag, given, allowed in (
        ("models", models, set(MODELS)),
        ("modes", modes, {"train", "infer"}),
        ("impls", impls, {"ours", "torchvision"}),
    ):
        if set(given) - allowed:
            raise SystemExit(
                f"--{flag}: unknown {sorted(set(given) - allowed)}; choose from {sorted(allowed)}"
            )
    common = {
        "tiny": tiny,
        "steps": steps or (2 if tiny else 5),
        "warmup": warmup if warmup is not None else (1 if tiny else 2),
        "matmul_size": 256 if tiny else None,
        "torch_python": torch_python,
    }
    return [
        {"model": model, "mode": mode, "batch_size": batch, "impl": impl, **common}
        for batch in sizes
        for model in models
        for mode in modes
        for impl in impls
    ]


def load(spec: dict):
    """(config, image size (H, W), num_classes) of an item; bfloat16 compute."""
    module, size, num_classes = MODELS[spec["model"]]
    if spec["tiny"]:
        module, size = "configs.synthetic", TINY_SIZE
    config = importlib.import_module(module).get_config()
    config.model.dtype = "bfloat16"
    config.batch_size = spec["batch_size"]
    if spec["tiny"]:  # tests/tiny.py's sizes
        config.model.backbone_options = {"widths": (8, 8, 16, 16)}
        config.model.rpn.update(channels=16, pre_nms_top_n=200, post_nms_top_n=64, num_samples=64)
        config.model.roi.update(hidden=(32, 32), op=TINY_ROI_OPS[spec["model"]], num_samples=16)
        config.model.test.update(pre_nms_top_n=100, post_nms_top_n=32)
        config.data.max_boxes = 4
    return config, size, num_classes


def _setup(spec: dict):
    import bench_lib  # noqa: PLC0415 (puts the repository root on sys.path)
    import bench_models  # noqa: PLC0415

    config, size, num_classes = load(spec)
    model = bench_models.build_model(config, num_classes=num_classes)
    batches = bench_lib.synthetic_batches(
        batch_size=spec["batch_size"],
        size=size,
        max_boxes=config.data.max_boxes,
        num_classes=num_classes,
    )
    return bench_lib, config, size, model, batches


def run_ours_item(spec: dict) -> dict:
    """Compiles and times one of our items in this process; a bench_lib result dict."""
    bench_lib, config, _, model, batches = _setup(spec)
    import jax_detection  # noqa: PLC0415

    run = jax_detection.run_train if spec["mode"] == "train" else jax_detection.run_infer
    options = {k: spec[k] for k in ("warmup", "steps", "matmul_size")}
    result = run(config, model, batches, **options)
    return {
        **result,
        "versions": bench_lib.versions(),
        "device": bench_lib.device_description(),
    }


def run_torch_item(spec: dict, *, timeout_s: float) -> dict:
    """torchvision's item through ``bench_lib.run_torch`` (a subprocess; no JAX device use)."""
    import jax  # noqa: PLC0415

    # This process only builds the model description and NumPy batches: should anything
    # start a JAX backend here, it must not take the GPU memory the items need.
    jax.config.update("jax_platforms", "cpu")
    bench_lib, _, size, model, batches = _setup(spec)
    return bench_lib.run_torch(
        model,
        batches,
        size,
        compute_dtype="bfloat16",
        training=spec["mode"] == "train",
        warmup=spec["warmup"],
        steps=spec["steps"],
        matmul_size=spec["matmul_size"],
        torch_python=spec["torch_python"],
        timeout_s=timeout_s,
    )


def _label(spec: dict) -> str:
    model = f"small ({TINY_ROI_OPS[spec['model']]})" if spec["tiny"] else spec["model"]
    return f"{model} {spec['mode']} batch {spec['batch_size']} {spec['impl']}"


def describe(spec: dict, result: dict) -> str:
    """One progress line."""
    if "error" in result:
        return f"{_label(spec)}: {result['error']}"
    return (
        f"{_label(spec)}: {spec['batch_size'] / result['median_s']:.3g} images/s, "
        f"compile/first {result.get('compile_s', result.get('first_step_s')):.1f} s, "
        f"{result['wall_s']:.0f} s wall"
    )


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")[:160]


def write_table(path: str, results: list[tuple[dict, dict]], *, command: str, elapsed_s: float):
    """Writes the Markdown table of the items run so far (header: devices and versions)."""
    speed = {
        (s["model"], s["mode"], s["batch_size"], s["impl"]): s["batch_size"] / r["median_s"]
        for s, r in results
        if "error" not in r
    }
    seen = {}
    for spec, result in results:
        for key in ("device", "versions"):
            if key in result:
                seen.setdefault(f"{spec['impl']} {key}", result[key])
    lines = [
        "# GPU suite",
        "",
        f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M')}; {elapsed_s:.0f} s so far.",
        "",
        *(f"- {key}: {value}" for key, value in seen.items()),
        "- MFU: each side's FLOP count (XLA's cost analysis; torch's FlopCounterMode, which "
        "counts no nms/roi ops) over a bf16 matmul rate measured in the same process.",
        "",
        "| model | image | mode | batch | impl | compile/first s | images/s | pipelined images/s "
        "| peak memory | MFU | ours / torchvision | item wall s | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for spec, r in results:
        size = TINY_SIZE if spec["tiny"] else MODELS[spec["model"]][1]
        model = f"small ({TINY_ROI_OPS[spec['model']]})" if spec["tiny"] else spec["model"]
        head = f"| {model} | {size[0]}x{size[1]} | {spec['mode']} | {spec['batch_size']} | "
        head += f"{spec['impl']} | "
        wall = f"{r['wall_s']:.0f}" if "wall_s" in r else "-"
        if "error" in r:
            lines.append(head + f"- | - | - | - | - | - | {wall} | {_cell(r['error'])} |")
            continue
        key = (spec["model"], spec["mode"], spec["batch_size"])
        ratio = "-"
        if spec["impl"] == "ours" and (*key, "torchvision") in speed:
            ratio = f"{speed[(*key, 'ours')] / speed[(*key, 'torchvision')]:.2f}x"
        first = r.get("compile_s", r.get("first_step_s"))
        lines.append(
            head + f"{first:.1f} | {spec['batch_size'] / r['median_s']:.3g} | "
            f"{spec['batch_size'] / r['pipelined_s']:.3g} | {bench_timing.gib(r['peak_bytes'])} | "
            f"{bench_timing.mfu(r)} | {ratio} | {wall} | {_cell(r['peak_what'])} |"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    forbid_tensorflow()
    print(MARKER + json.dumps(run_ours_item(json.loads(sys.argv[1]))), flush=True)
