"""Single convolutions, ours against torch's, in one process with their runs interleaved.

Run:
  python benchmarks/conv_ab.py                       # VGG16 and ResNet-50-FPN layer shapes
  python benchmarks/conv_ab.py --shapes=152x256x256x256,76x128x512x512:1 --rounds=7

For each shape ``HxWxCxD[:K]`` (batch 1, a KxK kernel, stride 1, padding K // 2; K = 3
unless given), times the three passes of a training step's convolution on both sides:
the forward pass, the input gradient and the kernel gradient. Ours are the programs our
models run on CPU (``conv.conv_general_dilated`` and its gradients through ``jax.vjp``, each
jitted with our compiler options): Winograd F(2x2, 3x3) for 3x3 layers of at least
``conv.WINOGRAD_MIN_CHANNELS`` channels, else XLA's convolution forward and for the input
gradient, and ``conv.kernel_grad_matmuls`` for the kernel gradient. The "direct" column is
the same programs traced under ``conv.xla_convolutions`` (no Winograd: what every layer ran
before it). torch's are
``conv2d`` and ``aten::convolution_backward`` with one gradient asked for at a time (oneDNN
on CPU), and both together as torch's backward pass computes them. Every round runs each
program once untimed and once timed, ours and then torch's, so a shared machine's swings
hit both sides alike; medians over ``--rounds``. torch runs with as many threads as JAX's
CPU client uses cores (``--threads``, default all), under the same malloc settings
(``host_memory``, set for the whole process) and with its OpenMP threads waiting passively
between operators (``OMP_WAIT_POLICY=PASSIVE`` unless set). The step profiles
(step_profile.py --torch) compare whole steps; this compares the operations they are made of.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO_ROOT)

from frcnn_jax import host_memory  # noqa: E402

# Before JAX and torch start their threads; torch shares the process, so both sides get it.
MALLOC_TUNED = host_memory.tune_malloc()
# torch's OpenMP threads spin after each operator by default, taking the cores from the next
# program, which is ours: 50x84, 1024 -> 256 1x1 forward 39.9 ms against 13.4 ms with passive
# waiting (torch's own 18.3 and 13.7 ms). Read when torch loads OpenMP, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402

import bench_lib  # noqa: E402
import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from frcnn_jax.models import conv  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_SHAPES = (
    "608x1024x64x64,304x512x128x128,152x256x256x256,76x128x512x512,"  # VGG16 at 600x1000
    "200x336x256x256,200x336x64x256:1,100x168x512x128:1,50x84x1024x256:1"  # R50-FPN 800x1333
)
flags.DEFINE_string("shapes", DEFAULT_SHAPES, "Comma-separated HxWxCxD[:K] (batch 1, K x K).")
flags.DEFINE_integer("threads", None, "torch's threads (default: os.cpu_count()).")
flags.DEFINE_integer("rounds", 5, "Rounds; each runs every program of a shape once, timed.")

_NHWC = ("NHWC", "HWIO", "NHWC")


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``"152x256x256x256:3"`` -> (H, W, C, D, K); K defaults to 3."""
    dims, _, k = text.strip().partition(":")
    try:
        h, w, c, d = (int(v) for v in dims.split("x"))
        kernel = int(k or 3)
    except ValueError:
        raise ValueError(f"a shape is HxWxCxD[:K], e.g. 152x256x256x256:3; got {text!r}") from None
    if min(h, w, c, d, kernel) < 1 or kernel % 2 == 0:
        raise ValueError(f"sizes must be positive and K odd; got {text!r}")
    return h, w, c, d, kernel


def jax_programs(h, w, c, d, k, *, winograd: bool = True) -> dict:
    """name -> (compiled, args): our forward, input gradient and kernel gradient
    (``winograd=False``: traced under ``conv.xla_convolutions``)."""
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (1, h, w, c))
    kernel = jax.random.normal(keys[1], (k, k, c, d)) * 0.02
    dy = jax.random.normal(keys[2], (1, h, w, d))

    def forward(x, kernel):
        return conv.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_NHWC)

    def input_grad(x, kernel, dy):
        return jax.vjp(lambda x: forward(x, kernel), x)[1](dy)[0]

    def kernel_grad(x, kernel, dy):
        return jax.vjp(lambda kernel: forward(x, kernel), kernel)[1](dy)[0]

    options = conv.compiler_options("cpu")
    programs = {
        "forward": (forward, (x, kernel)),
        "input grad": (input_grad, (x, kernel, dy)),
        "kernel grad": (kernel_grad, (x, kernel, dy)),
    }
    with contextlib.nullcontext() if winograd else conv.xla_convolutions():
        lowered = {
            name: (jax.jit(f, compiler_options=options).lower(*args), args)
            for name, (f, args) in programs.items()
        }
    return {name: (low.compile(), args) for name, (low, args) in lowered.items()}


def torch_programs(torch, h, w, c, d, k) -> dict:
    """name -> function: torch's forward, input gradient, kernel gradient and both gradients."""
    x, dy = torch.randn(1, c, h, w), torch.randn(1, d, h, w)
    kernel = torch.randn(d, c, k, k) * 0.02
    pad = [k // 2, k // 2]

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, kernel, None, [1, 1], pad, [1, 1], False, [0, 0], 1, mask
        )

    return {
        "forward": lambda: torch.nn.functional.conv2d(x, kernel, padding=k // 2),
        "input grad": backward([True, False, False]),
        "kernel grad": backward([False, True, False]),
        "both grads": backward([True, True, False]),
    }


def time_once(run) -> float:
    run()  # untimed: the same buffers, warm
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv):
    del argv
    import torch  # noqa: PLC0415 (torch only where this benchmark runs)

    torch.set_num_threads(FLAGS.threads or os.cpu_count())
    shapes = [parse_shape(s) for s in FLAGS.shapes.split(",") if s.strip()]
    print(f"convolutions, ours against torch's: {FLAGS.rounds} rounds, interleaved")
    print(f"device: {bench_lib.device_description()}; {bench_lib.versions()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"oneDNN {torch.backends.mkldnn.is_available()}")  # fmt: skip
    print(f"host malloc tuned (frcnn_jax.host_memory): {MALLOC_TUNED}")
    print(
        "markdown: | shape (H x W, C -> D, K x K) | GFLOP a pass "
        "| forward ours / direct / torch ms | input grad ours / direct / torch ms "
        "| kernel grad ours / direct / torch ms | torch both grads ms |"
    )
    print("markdown: | --- | --- | --- | --- | --- | --- |")
    for h, w, c, d, k in shapes:
        sides = {
            "ours": jax_programs(h, w, c, d, k),
            "direct": jax_programs(h, w, c, d, k, winograd=False),
        }
        theirs = torch_programs(torch, h, w, c, d, k)
        times = {(side, n): [] for side in sides for n in sides["ours"]}
        times |= {("torch", n): [] for n in theirs}
        with torch.no_grad():
            for _ in range(FLAGS.rounds):
                for side, programs in sides.items():
                    for name, (compiled, args) in programs.items():
                        times[side, name].append(
                            time_once(lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
                        )
                for name, run in theirs.items():
                    times["torch", name].append(time_once(run))
        ms = {key: 1e3 * statistics.median(v) for key, v in times.items()}
        pair = [
            f"{ms['ours', n]:.4g} / {ms['direct', n]:.4g} / {ms['torch', n]:.4g}"
            for n in sides["ours"]
        ]
        gflop = 2 * h * w * c * d * k * k / 1e9
        print(f"markdown: | {h}x{w}, {c} -> {d}, {k}x{k} | {gflop:.1f} | " + " | ".join(pair)
              + f" | {ms['torch', 'both grads']:.4g} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    app.run(main)
