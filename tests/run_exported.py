"""Runs an exported detector as a user would, without frcnn_jax (tests/test_export.py).

  python tests/run_exported.py FORMAT DIR IMAGES.npy OUT.npz [BATCH]

FORMAT is stablehlo (needs jax only), saved_model (tensorflow, no jax) or onnx (onnxruntime,
neither). Images uint8 [N, H, W, 3] run in batches of BATCH (default: all at once; the last
batch padded with zero images); OUT.npz gets boxes, classes, scores, valid for the N images.
The packages a format must do without cannot be imported here, as if they were not installed
(TensorFlow 2.21 itself imports jax when it is installed, and does without it otherwise).
"""

import importlib.abc
import sys

import numpy as np

OUTPUTS = ("boxes", "classes", "scores", "valid")
FORBIDDEN = {
    "stablehlo": ("frcnn_jax", "flax"),
    "saved_model": ("frcnn_jax", "flax", "jax", "jaxlib"),
    "onnx": ("frcnn_jax", "flax", "jax", "jaxlib", "tensorflow"),
}


class Uninstalled(importlib.abc.MetaPathFinder):
    """Makes the top-level packages ``names`` unimportable."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None


def runner(kind: str, directory: str):
    if kind == "stablehlo":
        from jax import export

        with open(f"{directory}/model.stablehlo", "rb") as f:
            detect = export.deserialize(bytearray(f.read()))
        return lambda images: {k: np.asarray(v) for k, v in detect.call(images).items()}
    if kind == "saved_model":
        import tensorflow as tf

        detect = tf.saved_model.load(f"{directory}/saved_model").signatures["serving_default"]
        return lambda images: {k: v.numpy() for k, v in detect(images=tf.constant(images)).items()}
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(f"{directory}/model.onnx", options)
        return lambda images: dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": images})))
    raise ValueError(f"unknown format {kind}")


def main(kind, directory, images_path, out_path, batch=None):
    sys.meta_path.insert(0, Uninstalled(FORBIDDEN[kind]))
    images = np.load(images_path)
    batch = int(batch) if batch else len(images)
    detect = runner(kind, directory)
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        fill = np.zeros((batch - len(chunk), *chunk.shape[1:]), np.uint8)
        out = detect(np.concatenate([chunk, fill]))
        parts.append({k: out[k][: len(chunk)] for k in OUTPUTS})
    np.savez(out_path, **{k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS})
    assert not [m for m in FORBIDDEN[kind] if m in sys.modules]


if __name__ == "__main__":
    main(*sys.argv[1:])
