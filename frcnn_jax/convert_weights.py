"""``python -m frcnn_jax.convert_weights``: the weight converter (frcnn_jax/weights/convert.py)."""

if __name__ == "__main__":
    from frcnn_jax.weights.convert import main

    main()
