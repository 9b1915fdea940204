"""ImageNet weights: torchvision files converted to our variables (``convert``, the
``python -m frcnn_jax.convert_weights`` command) and loaded strictly into a model (``load``).
"""
