"""Our train step and predict function, compiled and timed: torch_detection.py's twin.

Shape shorthand: B batch, Hb, Wb padded image size.

Used by train_bench.py, infer_bench.py and gpu_suite.py. Both functions compile
ahead of time (the compile time is reported), then time steps on random batches
already on the device (two alternating batches of one shape: nothing recompiles)
and return a result dict of ``bench_lib.jax_result``.

``rounds`` > 1 times the compiled program in that many rounds and calls
``before_round(r)`` before each: the side by side runs torchvision's round there, so both
sides are timed at the same moments of a noisy machine (``bench_lib.combine_rounds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import bench_lib
import bench_models
import jax
import numpy as np


def _time_rounds(run_step, *, warmup: int, steps: int, rounds: int, before_round) -> dict:
    """``bench_lib.time_steps`` in ``rounds`` rounds, ``before_round(r)`` before each."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    results = []
    for r in range(rounds):
        if before_round is not None:
            before_round(r)
        results.append(
            bench_lib.time_steps(run_step, jax.block_until_ready, warmup=warmup, steps=steps)
        )
    return results[0] if rounds == 1 else bench_lib.combine_rounds(results)


def run_train(
    config,
    model,
    host_batches: list[dict],
    *,
    warmup: int,
    steps: int,
    matmul_size=None,
    rounds: int = 1,
    before_round: Callable[[int], None] | None = None,
) -> dict:
    """Times the data-parallel train step (all devices, batch sharded, state donated).

    Raises ValueError if the batch does not split over the devices, FloatingPointError
    if the loss on the random data is not finite.
    """
    batch_size = host_batches[0]["images"].shape[0]
    if batch_size % jax.device_count():
        raise ValueError(f"{batch_size} images do not split over {jax.device_count()} devices")
    variables = bench_models.init_variables(model, jax.random.key(config.seed))
    state = bench_models.create_train_state(config, model, variables)
    step_fn, place_state, place_batch = bench_models.jit_mesh_train_step()
    state = place_state(state)
    batches = [place_batch(b) for b in host_batches]
    root = jax.random.key(config.seed)
    keys = [jax.random.fold_in(root, i) for i in range(warmup + 2 * steps)]

    start = time.perf_counter()
    traced = step_fn.trace(state, batches[0], keys[0])
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    flops = None
    if jax.default_backend() == "cpu":  # the CPU program's scans hide FLOPs from XLA's count
        flops = (bench_lib.loop_free_flops(traced), "XLA cost analysis of the CUDA lowering")
    holder = {"state": state}

    def run_step(i):
        holder["state"], metrics = compiled(holder["state"], batches[i % len(batches)], keys[i])
        return metrics

    timing = _time_rounds(
        run_step, warmup=warmup, steps=steps, rounds=rounds, before_round=before_round
    )
    loss = float(run_step(0)["total"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss} on random data")
    return bench_lib.jax_result(
        config, compiled, compile_s=compile_s, timing=timing, matmul_size=matmul_size, flops=flops
    )


def run_infer(
    config,
    model,
    host_batches: list[dict],
    *,
    warmup: int,
    steps: int,
    matmul_size=None,
    rounds: int = 1,
    before_round: Callable[[int], None] | None = None,
) -> dict:
    """Times the predict function (``model.detect``) on one device."""
    variables = bench_models.init_variables(model, jax.random.key(config.seed))
    batches = [jax.device_put((b["images"], b["image_sizes"])) for b in host_batches]
    predict = bench_models.predict_fn(model)

    start = time.perf_counter()
    compiled = predict.lower(variables, *batches[0]).compile()
    compile_s = time.perf_counter() - start

    def run_step(i):
        return compiled(variables, *batches[i % len(batches)])

    timing = _time_rounds(
        run_step, warmup=warmup, steps=steps, rounds=rounds, before_round=before_round
    )
    return bench_lib.jax_result(
        config, compiled, compile_s=compile_s, timing=timing, matmul_size=matmul_size
    )
