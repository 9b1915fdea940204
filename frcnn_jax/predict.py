"""``python -m frcnn_jax.predict``: the predict command (code in frcnn_jax/inference/predict.py)."""

from frcnn_jax import host_memory

if __name__ == "__main__":  # before JAX starts its threads: faster CPU inference
    host_memory.tune_malloc()

    from frcnn_jax.inference.predict import main

    main()
