"""A/B of train steps: variants of one config compiled side by side, their steps interleaved.

Run:
  python benchmarks/step_ab.py --config=configs/custom.py --image_size=256,352 --num_classes=6 \
    --variant='base:' --variant='rpn32:model.rpn.channels=32' --rounds=20

Two runs of train_bench.py on a shared 2-core machine differ by 5-15% (other jobs, the
machine's day), more than most changes worth making; a single run of two variants in one
process, taking turns every few steps, sees the same disturbances on both sides. Every
variant is compiled first; then each round runs ``--per_round`` steps of every variant in
turn and times all but the first of them (the switch from one program's memory to another's
stays out). Printed per variant: median and minimum step time, images/s, and its ratio
to the first variant, as text and Markdown rows.

``--variant=NAME:KEY=VALUE;KEY=VALUE`` (repeatable; ``NAME:`` for the config as it is): KEY is
a dotted config field (``model.rpn.channels``), VALUE a Python literal (``(32, 64)``, ``1e-4``,
``True``), else a string. An unknown field is an error naming it. A KEY ``xla.FLAG`` sets an
XLA compiler option for that variant's step instead (``xla.xla_cpu_experimental_ynn_fusion_type=``
``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``; the VALUE as a string), on top of the options every
program of ours gets (``conv.compiler_options``). The KEY ``conv.winograd=False`` compiles that
variant's step with XLA's own convolutions only (traced under ``conv.xla_convolutions``; the
CPU's Winograd 3x3 convolutions are the default). ``--config.*`` flags change every variant.
Batches: bench_util's synthetic images and boxes of one shape, on one device, as
train_bench.py (so a variant that changes the data pipeline measures nothing here). For code
changes rather than config changes, run the script from two checkouts instead.
"""

from __future__ import annotations

import bench_util  # first: it tunes malloc before JAX starts

# isort: split
import ast
import contextlib
import statistics
import time

import bench_models
import jax
import ml_collections
from absl import app, flags

from frcnn_jax.models import conv

FLAGS = bench_util.FLAGS
flags.DEFINE_multi_string(
    "variant",
    None,
    "NAME:KEY=VALUE;KEY=VALUE (see the module docstring); at least two.",
)
# bench_util's --rounds: here each round runs --per_round steps of every variant.
FLAGS.set_default("rounds", 10)
flags.DEFINE_integer("per_round", 3, "Steps of a variant per round; the first is not timed.")


XLA_PREFIX = "xla."  # a variant's KEY with it names a compiler option, not a config field
WINOGRAD_KEY = "conv.winograd"  # a variant's KEY: False traces it under conv.xla_convolutions


def parse_variant(spec: str) -> tuple[str, dict[str, object]]:
    """``"NAME:KEY=VALUE;KEY=VALUE"`` -> (NAME, {KEY: value}); values as Python literals,
    except for ``xla.`` keys (compiler options: strings as written)."""
    name, sep, rest = spec.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--variant={spec!r}: expected NAME:KEY=VALUE;... (or NAME: alone)")
    overrides = {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--variant={spec!r}: {item!r} is not KEY=VALUE")
        if key.strip().startswith(XLA_PREFIX):
            value = text.strip()
        else:
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                value = text.strip()
        overrides[key.strip()] = value
    return name.strip(), overrides


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, object]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted ``overrides`` set.

    Raises ValueError for an unknown field, TypeError (ConfigDict's) for a value of the wrong
    type.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(f"unknown config field {key!r}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"unknown config field {key!r}")
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        node[leaf] = value
    return config


def split_overrides(overrides: dict[str, object]) -> tuple[dict[str, object], dict[str, str]]:
    """(config overrides, XLA compiler options) of a parsed variant."""
    options = {
        k[len(XLA_PREFIX) :]: str(v) for k, v in overrides.items() if k.startswith(XLA_PREFIX)
    }
    fields = {k: v for k, v in overrides.items() if not k.startswith(XLA_PREFIX)}
    if any(not name for name in options):
        raise ValueError("an xla. key needs an option name: xla.FLAG=VALUE")
    return fields, options


def compile_variant(
    config,
    size: tuple[int, int],
    xla_options: dict[str, str] | None = None,
    *,
    winograd: bool = True,
) -> dict:
    """Model, state, batches and the compiled step of one variant (with ``xla_options`` on top
    of our programs' compiler options; ``winograd=False``: XLA's convolutions only)."""
    model = bench_models.build_model(config, num_classes=FLAGS.num_classes)
    key = jax.random.key(0)
    state = bench_models.create_train_state(config, model, bench_models.init_variables(model, key))
    host = bench_util.synthetic_batches(config, batch_size=config.batch_size, size=size)
    batches = [jax.device_put(b) for b in host]
    start = time.perf_counter()
    with contextlib.nullcontext() if winograd else conv.xla_convolutions():
        step = bench_models.jit_train_step(extra_options=xla_options).lower(state, batches[0], key)
    step = step.compile()
    return {
        "step": step,
        "state": state,
        "batches": batches,
        "compile_s": time.perf_counter() - start,
        "times": [],
    }


def run_round(variant: dict, *, steps: int, first_step: int) -> None:
    """``steps`` synchronised steps of one variant; all but the first timed."""
    for i in range(steps):
        batch = variant["batches"][(first_step + i) % len(variant["batches"])]
        start = time.perf_counter()
        variant["state"], metrics = variant["step"](
            variant["state"], batch, jax.random.fold_in(jax.random.key(1), first_step + i)
        )
        jax.block_until_ready(metrics)
        if i:
            variant["times"].append(time.perf_counter() - start)


def main(argv):
    base, size = bench_util.train_config(argv)
    if not FLAGS.variant or len(FLAGS.variant) < 2:
        raise app.UsageError("give at least two --variant=NAME:KEY=VALUE;... flags")
    if FLAGS.per_round < 2 or FLAGS.rounds < 1:
        raise app.UsageError("--per_round must be at least 2 and --rounds at least 1")
    configs, options, winograd = {}, {}, {}
    for spec in FLAGS.variant:
        try:
            name, overrides = parse_variant(spec)
            fields, options[name] = split_overrides(overrides)
            winograd[name] = fields.pop(WINOGRAD_KEY, True)
            if not isinstance(winograd[name], bool):
                raise ValueError(f"{WINOGRAD_KEY} is True or False, got {winograd[name]!r}")
            configs[name] = apply_overrides(base, fields)
        except (ValueError, TypeError) as e:  # TypeError: a value of the wrong type
            raise app.UsageError(str(e)) from e
    if len(configs) != len(FLAGS.variant):
        raise app.UsageError("two --variant flags have the same NAME")
    print(f"step A/B: image={size[0]}x{size[1]} batch={base.batch_size}")
    print(f"device: {bench_util.device_description()}; {bench_util.versions()}")
    print(f"host malloc tuned (frcnn_jax.host_memory): {bench_util.MALLOC_TUNED}")
    variants = {}
    for spec, (name, config) in zip(FLAGS.variant, configs.items(), strict=True):
        try:
            variants[name] = compile_variant(config, size, options[name], winograd=winograd[name])
        except Exception as e:  # XLA rejects an unknown option or value: say which variant
            if not options[name]:
                raise
            raise app.UsageError(f"variant {name!r}: {str(e).splitlines()[0]}") from e
        print(f"{name}: compiled in {variants[name]['compile_s']:.1f} s  ({spec})", flush=True)
    for r in range(FLAGS.rounds):
        for variant in variants.values():
            run_round(variant, steps=FLAGS.per_round, first_step=r * FLAGS.per_round)
    rows, reference = [], None
    for name, variant in variants.items():
        median = statistics.median(variant["times"])
        reference = reference or median
        images = configs[name].batch_size / median
        ratio = reference / median
        print(
            f"{name}: median step {median * 1e3:.1f} ms (min {min(variant['times']) * 1e3:.1f}, "
            f"{len(variant['times'])} steps), {images:.3g} images/s, speed x{ratio:.3f} "
            f"against {next(iter(variants))}"
        )
        rows.append(
            f"| {name} | {variant['compile_s']:.1f} | {median * 1e3:.1f} | "
            f"{min(variant['times']) * 1e3:.1f} | {images:.3g} | {ratio:.3f} |"
        )
    print("markdown: | variant | compile s | median step ms | min step ms | images/s | speed |")
    print("markdown: | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"markdown: {row}")


if __name__ == "__main__":
    app.run(main)
