"""Smoke tests: both benchmarks run on CPU with a tiny config and print every figure.

Each runs as a subprocess, as users run it, with ``--torch``: where torchvision
cannot run (not installed, or a CUDA build next to a CPU torch) the benchmark
must say so and still report our figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/tiny.py's tiny_config as a config file (config_flags loads files, not functions).
TINY_CONFIG = f"""
import sys
sys.path.insert(0, {os.path.join(REPO_ROOT, "tests")!r})
from tiny import tiny_config


def get_config():
    return tiny_config()
"""


def run_benchmark(tmp_path, script: str, *flags: str, timeout: float = 300) -> str:
    """``benchmarks/SCRIPT --config=<the tiny config> FLAGS`` on CPU in a subprocess; its stdout."""
    config = tmp_path / "tiny_bench_config.py"
    config.write_text(TINY_CONFIG)
    # Compilation dominates at this size; skip XLA's optimisation passes.
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, os.path.join(REPO_ROOT, "benchmarks", script), f"--config={config}"]
    proc = subprocess.run(
        [*command, *flags], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# A stand-in for --torch_python: answers torch_detection.py's protocol with fixed figures (2 s per
# step) and counts its runs, so the interleaved rounds are checked where torchvision cannot run.
FAKE_TORCH = """#!/bin/sh
echo run >> "$0.runs"
echo 'TORCH_RESULT {"median_s": 2.0, "pipelined_s": 2.0, "first_step_s": 1.0, "peak_bytes": 1,\
 "peak_what": "fake", "flops": 1.0, "flops_what": "fake", "matmul_flops_per_s": 1.0,\
 "matmul_what": "fake", "versions": "fake torch", "device": "cpu"}'
"""


@pytest.mark.parametrize("script", ["train_bench.py", "infer_bench.py"])
def test_benchmark_prints_its_figures(script, tmp_path):
    flags = ["--batch_size=2", "--image_size=64", "--steps=2", "--warmup=1", "--matmul_size=256"]
    if script == "train_bench.py":
        # Two rounds, each torchvision's (the stand-in) and then ours.
        fake = tmp_path / "fake_python"
        fake.write_text(FAKE_TORCH)
        fake.chmod(0o755)
        flags += ["--torch", f"--torch_python={fake}", "--rounds=2"]
    else:
        flags += ["--torch"]
    out = run_benchmark(tmp_path, script, *flags)
    for field in (
        "benchmark: backbone=small dtype=float32 batch=2 image=64x64",
        "device: cpu",
        "compile time:",
        "steady images/s:",
        "pipelined images/s:",
        "peak memory:",
        "FLOPs per step:",
        "MFU:",
        "== torchvision FasterRCNN",
        "ratio ours/theirs (images/s)",
        "markdown: | ",
    ):
        assert field in out, f"{field!r} missing from:\n{out}"
    if script == "train_bench.py":
        assert (tmp_path / "fake_python.runs").read_text().split() == ["run", "run"]
        assert out.count("median of 2 rounds' medians") == 2, out  # both sides
        rounds = re.findall(
            r"round (\d): ours ([\d.]+), torchvision 1\.000 images/s: ([\d.]+)x", out
        )
        assert [r[0] for r in rounds] == ["1", "2"], out
        ratios = [float(r[2]) for r in rounds]
        for _, ours, ratio in rounds:  # ours / torchvision's 1 image/s (2 images in 2 s)
            assert float(ratio) == pytest.approx(float(ours), abs=0.01)
        median = re.search(r"median of the rounds' ratios: ([\d.]+)x", out).group(1)
        assert float(median) == pytest.approx(sum(ratios) / 2, abs=0.01)
    else:
        # The small backbone has no torchvision counterpart, and torchvision may be absent.
        assert "not runnable here: torchvision cannot run:" in out


def test_combine_rounds_takes_medians_and_the_largest_peak():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_lib

    rounds = [
        {"median_s": 3.0, "pipelined_s": 2.0, "peak_bytes": 5, "flops": 7.0},
        {"median_s": 1.0, "pipelined_s": 4.0, "peak_bytes": 9, "flops": 8.0},
        {"median_s": 2.0, "pipelined_s": 3.0, "peak_bytes": 6, "flops": 9.0},
    ]
    combined = bench_lib.combine_rounds(rounds)
    assert (combined["median_s"], combined["pipelined_s"]) == (2.0, 3.0)
    assert combined["peak_bytes"] == 9 and combined["flops"] == 7.0  # first round's count
    assert combined["rounds"] == rounds
    theirs = bench_lib.combine_rounds([{"median_s": 6.0, "pipelined_s": 1.0}] * 3)
    assert bench_lib.round_ratios(combined, theirs) == [2.0, 6.0, 3.0]
    failed = [rounds[0], {"error": "torchvision cannot run: x"}]
    assert bench_lib.combine_rounds(failed) == {"error": "torchvision cannot run: x"}
    with pytest.raises(ValueError, match="no rounds"):
        bench_lib.combine_rounds([])


def run_gpu_suite(tmp_path, *flags):
    """gpu_suite.py --tiny on CPU in a subprocess; returns (process, table rows by item)."""
    output = tmp_path / "suite.md"
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
    script = os.path.join(REPO_ROOT, "benchmarks", "gpu_suite.py")
    command = [sys.executable, script, "--tiny", f"--output={output}", *flags]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for line in output.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 13 and cells[3].isdigit():
            rows[(cells[0], cells[2], cells[4])] = cells  # (model, mode, impl)
    return proc, rows


def test_gpu_suite_runs_end_to_end_with_tiny_sizes(tmp_path):
    # One model (the small backbone with RoIPool), both modes, ours and torchvision's items;
    # the budget is generous because the CI machine is shared.
    _, rows = run_gpu_suite(tmp_path, "--models=vgg16", "--budget_s=500")
    model = "small (pool)"
    modes, impls = ("train", "infer"), ("ours", "torchvision")
    assert set(rows) == {(model, m, i) for m in modes for i in impls}
    for mode in modes:
        ours = rows[(model, mode, "ours")]
        assert float(ours[6]) > 0 and float(ours[5]) > 0 and ours[8].endswith("GiB"), ours
        # TensorFlow cannot be imported in the suite: our items ran without it.
        # torchvision has no counterpart of the small backbone, and may be absent.
        assert "torchvision cannot run" in rows[(model, mode, "torchvision")][-1]


def test_gpu_suite_keeps_the_table_when_items_fail(tmp_path):
    # Items that hang are cut at their timeout, items past the budget are skipped, and
    # every item still has its row.
    proc, rows = run_gpu_suite(
        tmp_path, "--impls=ours", "--item_timeout_s=0.5", "--min_item_s=0", "--budget_s=60"
    )
    assert len(rows) == 4, proc.stdout
    assert all("timed out after 0.5 s" in row[-1] for row in rows.values()), rows


def test_no_long_loops_on_accelerators():
    # loop_table.py's reading of the lowered programs, on the tiny model with RoIPool: for
    # CPU the train step has RoIPool's loop over rois (and the kernel-gradient scans); for a
    # GPU only NMS's loops remain, each tile loop bounded by its candidates / 2048.
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    import bench_models
    import hlo_loops
    import jax
    from tiny import tiny_config

    config = tiny_config(**{"model.roi.op": "pool", "model.backbone": "small"})
    model = bench_models.build_model(config, num_classes=3)
    state = bench_models.abstract_train_state(config, model)
    batch = bench_models.abstract_batch(batch_size=2, height=64, width=64, max_boxes=4)
    key = jax.eval_shape(lambda: jax.random.key(0))
    traced = bench_models.jit_train_step().trace(state, batch, key)

    def loops(platform):
        return hlo_loops.stablehlo_loops(traced.lower(lowering_platforms=(platform,)).compiler_ir())

    cpu = loops("cpu")
    assert any(loop.source.startswith("roi_ops/pool.py") for loop in cpu)
    # The kernel-gradient scans over blocks of output rows: one block at 64 x 64 px.
    assert any(loop.source.startswith("models/conv.py") and loop.trip_count == 1 for loop in cpu)
    gpu = loops("cuda")
    assert gpu and all(loop.source.startswith("nms.py") for loop in gpu), gpu
    assert [loop.bound for loop in gpu if not loop.parents] == [1]  # 200 candidates, one tile


def test_export_benchmark_prints_a_row_per_format(tmp_path):
    # ONNX's row is left out: its conversion (tested in test_export.py) would double the time.
    out = run_benchmark(
        tmp_path, "export_bench.py", "--batch_sizes=2", "--steps=1", "--warmup=0",
        "--formats=detector,stablehlo,saved_model", timeout=600,
    )  # fmt: skip
    assert "markdown: | format | batch 2 |" in out, out
    for name in ("detector", "stablehlo", "saved_model"):
        assert f"markdown: | {name} | " in out, out


def test_step_ab_times_each_variant_and_compares_with_the_first(tmp_path):
    out = run_benchmark(
        tmp_path, "step_ab.py", "--batch_size=2", "--image_size=64", "--rounds=2",
        "--per_round=2", "--variant=base:", "--variant=wide:model.roi.hidden=(64, 64)",
    )  # fmt: skip
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.removeprefix("markdown:").strip().strip("|").split("|")]
        if line.startswith("markdown: |") and cells[0] in ("base", "wide"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    assert set(rows) == {"base", "wide"}, out
    assert rows["base"][4] == 1.0, out  # the first variant is the reference
    for compile_s, median, fastest, images, _ in rows.values():
        assert compile_s > 0 and 0 < fastest <= median, out
        assert images == pytest.approx(2 / (median / 1e3), rel=0.01), out
    assert rows["wide"][4] == pytest.approx(rows["base"][1] / rows["wide"][1], rel=0.01), out
    # 2 rounds x (2 steps - 1 untimed)
    assert ", 2 steps)" in out.split("wide: median", 1)[1].splitlines()[0], out


@pytest.mark.parametrize(
    "variant, message",
    [
        ("wide:model.roi.hiden=(64, 64)", "unknown config field 'model.roi.hiden'"),
        ("wide", "expected NAME:KEY=VALUE"),
        ("wide:model.roi.hidden", "is not KEY=VALUE"),
        ("direct:conv.winograd=0", "conv.winograd is True or False, got 0"),
    ],
)
def test_step_ab_names_a_bad_variant(tmp_path, variant, message):
    config = tmp_path / "tiny_bench_config.py"
    config.write_text(TINY_CONFIG)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "step_ab.py"), f"--config={config}",
         "--variant=base:", f"--variant={variant}"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_step_ab_xla_keys_are_compiler_options_as_written():
    # In a subprocess: step_ab defines absl flags that other benchmark modules define too.
    code = """
import step_ab
name, overrides = step_ab.parse_variant(
    "v:model.rpn.channels=32;xla.xla_cpu_experimental_ynn_fusion_type=1e-4")
fields, options = step_ab.split_overrides(overrides)
assert name == "v" and fields == {"model.rpn.channels": 32}, fields
assert options == {"xla_cpu_experimental_ynn_fusion_type": "1e-4"}, options  # not 1e-4 float
try:
    step_ab.split_overrides({"xla.": "x"})
except ValueError as e:
    assert "needs an option name" in str(e), e
else:
    raise AssertionError("xla. without a name was accepted")
print("OK")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=os.path.join(REPO_ROOT, "benchmarks"), env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_step_ab_names_the_variant_whose_compiler_option_xla_rejects(tmp_path):
    # The option reaches XLA's compiler, which rejects an unknown one: a one-line usage error.
    config = tmp_path / "tiny_bench_config.py"
    config.write_text(TINY_CONFIG)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "step_ab.py"), f"--config={config}",
         "--variant=bad:xla.xla_cpu_no_such_option=1", "--variant=base:"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "variant 'bad'" in proc.stderr, proc.stderr[-2000:]
    assert "xla_cpu_no_such_option" in proc.stderr and "Traceback" not in proc.stderr


def test_loop_free_flops_count_every_pass_of_a_convolution():
    # On CPU the kernel gradient is a scan over blocks of rows, whose body XLA's cost analysis
    # counts once; the CUDA lowering that the benchmarks count instead has no such loop.
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_lib
    import jax
    import jax.numpy as jnp

    from frcnn_jax.models import conv

    x, w = jnp.ones((2, 64, 64, 16)), jnp.ones((3, 3, 16, 32))  # 5 blocks of rows on CPU

    def loss(x, w):
        nhwc = ("NHWC", "HWIO", "NHWC")
        y = conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=nhwc)
        return (y * y).sum()  # (a plain sum's gradient would not need the forward pass)

    one_pass = 2 * (2 * 64 * 64) * 16 * 32 * 9  # multiply-adds of the forward, as FLOPs
    forward = bench_lib.loop_free_flops(jax.jit(loss).trace(x, w))
    both = bench_lib.loop_free_flops(jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, w))
    assert forward == pytest.approx(one_pass, rel=0.02)
    assert both == pytest.approx(3 * one_pass, rel=0.02)  # forward, input and kernel gradients


# A stand-in for --torch_python in step_profile.py: a profile of 10 ms per category, 90 ms a step.
FAKE_TORCH_PROFILE = """#!/bin/sh
echo 'TORCH_RESULT {"median_s": 0.09, "pipelined_s": 0.09, "first_step_s": 1.0, "peak_bytes": 1,\
 "peak_what": "fake", "flops": 1.0, "flops_what": "fake", "matmul_flops_per_s": 1.0,\
 "matmul_what": "fake", "versions": "fake torch", "device": "cpu", "profile": {"by_category":\
 {"conv forward": 10, "conv backward (input and kernel gradients)": 10,\
 "matmul forward (dense layers)": 10, "matmul backward (dense layers)": 10,\
 "RoI ops forward": 10, "RoI ops backward": 10, "NMS and proposals": 10,\
 "optimizer update": 10, "everything else": 10}, "step_ms": 90.0,\
 "top": [[7.5, "aten::mkldnn_convolution", "[[1, 3, 64, 64]]"]]}}'
"""


def test_step_profile_attributes_the_train_step(tmp_path):
    # Every part of the step shows up in its own category: the attribution reads each
    # executed instruction's JAX name and Python stack from the compiled module. With --torch,
    # torchvision's profile (a stand-in here) is printed beside ours in the common categories.
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TORCH_PROFILE)
    fake.chmod(0o755)
    flags = ["--batch_size=2", "--image_size=64", "--steps=1", "--warmup=1"]
    out = run_benchmark(tmp_path, "step_profile.py", *flags, "--torch", f"--torch_python={fake}")
    ms, side = {}, {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.removeprefix("markdown:").strip().strip("|").split("|")]
        if line.startswith("markdown: |") and len(cells) == 3 and cells[1][:1].isdigit():
            ms[cells[0]] = float(cells[1])
        if line.startswith("markdown: |") and len(cells) == 4 and cells[1][:1].isdigit():
            side[cells[0]] = [float(c) for c in cells[1:]]
    conv_backward = ms["conv input gradient"] + ms["conv kernel gradient"]
    assert side["conv backward (input and kernel gradients)"][:2] == pytest.approx(
        [conv_backward, 10.0], abs=0.06
    ), out
    assert side["step (median wall time)"][1:] == pytest.approx(
        [90.0, ms["step (median wall time)"] / 90.0], abs=0.01
    ), out
    # Our side's common categories hold what the per-category table holds, host time included.
    assert sum(v[0] for k, v in side.items() if not k.startswith("step")) == pytest.approx(
        sum(v for k, v in ms.items() if not k.startswith("step")), abs=0.5
    ), out  # nine rows rounded to 0.1 ms
    assert "aten::mkldnn_convolution" in out
    for category in (
        "conv forward", "conv input gradient", "conv kernel gradient", "RoI ops forward",
        "RoI ops backward", "NMS and proposals", "targets, sampling, anchors",
        "optimizer update", "matmul forward (dense layers)", "matmul backward (dense layers)",
    ):  # fmt: skip
        assert ms[category] > 0, (category, out)
    step = ms["step (median wall time)"]
    categories = sum(v for k, v in ms.items() if not k.startswith(("step", "no instruction")))
    assert ms["unattributed (made by XLA)"] < 0.1 * step, out
    # Each moment of the step goes to at most one category (shared when ops overlap).
    assert 0.2 * step < categories <= 1.05 * step, out


def test_profile_wall_attribution_shares_overlaps_and_counts_loops_last():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    from profile_lib import Event, wall_attribution

    events = [
        Event("while.1", 0, 100),  # a loop whose body ran two instructions
        Event("dot.2", 10, 30),
        Event("add.3", 40, 60),
        Event("conv.4", 20, 70),  # asynchronous, overlaps the dot and the add
        Event("fusion.5", 120, 125),  # after a gap with nothing running
    ]
    got, covered = wall_attribution(events, lambda name: name.startswith("while"))
    # 0-10 loop; 10-20 dot; 20-30 dot+conv; 30-40 conv; 40-60 add+conv; 60-70 conv;
    # 70-100 loop; 100-120 nothing; 120-125 fusion.
    assert got == {"while.1": 40, "dot.2": 15, "conv.4": 35, "add.3": 10, "fusion.5": 5}
    assert covered == 105


def test_profile_categories_read_the_backward_pass_from_the_hlo():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import jax
    import jax.numpy as jnp
    from profile_lib import Program, categorize, parse_instructions, representative

    def f(x, w):
        return jnp.sum(jnp.tanh(x @ w))

    args = (jnp.ones((16, 32)), jnp.ones((32, 8)))
    text = jax.jit(jax.grad(f, argnums=1)).lower(*args).compile().as_text()
    instructions = parse_instructions(text)
    program = Program.from_instructions(instructions)
    dots = [i for i in instructions.values() if i.opcode == "dot"]
    assert dots and all(i.frames and i.frames[0][0] == __file__ for i in dots), dots
    categories = {categorize(*representative(i, program)) for i in dots}
    # x @ w forward, and its transpose (the gradient w.r.t. w).
    assert categories == {"matmul forward (dense layers)", "matmul backward (dense layers)"}


def test_max_rss_of_a_subprocess_is_its_own():
    # getrusage's ru_maxrss carries the parent's peak into a child (fork and exec): torchvision's
    # subprocess of an interleaved side by side would report our process's memory.
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_timing

    held = bytearray(512 * 2**20)
    held[:: 2**12] = b"\x01" * len(held[:: 2**12])  # touch every page: resident
    child = subprocess.run(
        [sys.executable, "-c", "import bench_timing; print(bench_timing.max_rss_bytes())"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "benchmarks")},
    )  # fmt: skip
    assert bench_timing.max_rss_bytes() > 512 * 2**20
    assert int(child.stdout) < 256 * 2**20, child.stdout
    del held


def test_torch_profile_puts_each_operator_in_its_category():
    # A real torch.profiler trace of a tiny train step: a convolution, a dense layer, the
    # backward pass and an SGD update each land in their own category, and the categories
    # share out exactly the operators' self time.
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import torch_profile

    conv, dense = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8 * 16 * 16, 4)
    params = [*conv.parameters(), *dense.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 16, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(2):
            loss = dense(torch.relu(conv(x)).flatten(1)).square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    events = profiler.events()
    summary = torch_profile.summarize(events, steps=2, top=3)
    ms = summary["by_category"]
    for category in (
        "conv forward", "conv backward (input and kernel gradients)",
        "matmul forward (dense layers)", "matmul backward (dense layers)", "optimizer update",
    ):  # fmt: skip
        assert ms[category] > 0, (category, ms)
    assert ms["RoI ops forward"] == ms["NMS and proposals"] == 0
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / 2
    assert sum(ms.values()) == pytest.approx(total)
    assert len(summary["top"]) == 3 and summary["top"][0][0] >= summary["top"][-1][0]


def test_torch_profile_reads_torchvision_ops_and_backward_callers():
    # torchvision's operators by name, forward or backward by the autograd engine above them.
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    from types import SimpleNamespace

    import torch_profile

    def event(name, parent=None):
        return SimpleNamespace(name=name, cpu_parent=parent)

    backward = event("autograd::engine::evaluate_function: RoiPoolBackward0")
    conv_backward = event("autograd::engine::evaluate_function: ConvolutionBackward0")
    step = event("Optimizer.step#SGD.step")
    cases = {
        "RoI ops forward": event("torchvision::roi_pool"),
        "RoI ops backward": event("torchvision::_roi_pool_backward", backward),
        "NMS and proposals": event("torchvision::nms"),
        "conv forward": event("aten::mkldnn_convolution", event("aten::convolution")),
        "conv backward (input and kernel gradients)": event("aten::add_", conv_backward),
        "matmul forward (dense layers)": event("aten::addmm"),
        "optimizer update": event("aten::add_", step),
        "everything else": event("aten::relu"),
    }
    for category, e in cases.items():
        assert torch_profile.categorize(e) == category, category


def test_conv_ab_prints_a_row_per_shape():
    # Ours and torch's convolutions side by side, tiny shapes: one Markdown row per shape with
    # both sides' times for each pass (torch's kernel gradient included), and a bad shape
    # is named.
    pytest.importorskip("torch")
    script = os.path.join(REPO_ROOT, "benchmarks", "conv_ab.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, script, "--shapes=8x12x4x6,6x6x8x4:1,4x6x128x128", "--rounds=2",
         "--threads=1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("markdown: | ")]
    assert len(rows) == 2 + 3, proc.stdout  # header, separator, three shapes
    cells = [c.strip() for c in rows[2].removeprefix("markdown:").strip().strip("|").split("|")]
    assert cells[0] == "8x12, 4 -> 6, 3x3" and float(cells[1]) == pytest.approx(
        2 * 8 * 12 * 4 * 6 * 9 / 1e9, abs=1e-4
    )
    for pair in cells[2:5]:  # ours (here XLA's: 4 channels), direct, torch
        assert all(float(v) > 0 for v in pair.split(" / ")) and pair.count(" / ") == 2
    assert "6x6, 8 -> 4, 1x1" in rows[3] and "4x6, 128 -> 128, 3x3" in rows[4]
    bad = subprocess.run(
        [sys.executable, script, "--shapes=8x12x4", "--rounds=1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "HxWxCxD[:K]" in bad.stderr
