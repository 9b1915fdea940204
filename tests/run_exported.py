"""Runs an exported detector with the README's own lines, without frcnn_jax.

  python tests/run_exported.py FORMAT DIR INPUTS.npz OUT.npz [BATCH]

FORMAT is stablehlo (needs jax only), saved_model (tensorflow, no jax) or onnx (onnxruntime,
neither): the README's "Deploy" code block for it runs with "exported/" replaced by DIR (its
lines before ``out = ...`` once, the rest per batch) on INPUTS.npz's images uint8
[N, H, W, 3] and scales float32 [N, 2] in batches of BATCH (default: all at once; the last
batch filled up with zero images of scale 1). OUT.npz gets boxes, classes, scores, valid of
the N images. The packages a format must do without cannot be imported here, as if not
installed (TensorFlow 2.21 itself imports jax when it is installed, and does without it
otherwise).
"""

import importlib.abc
import os
import re
import sys

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
OUTPUTS = ("boxes", "classes", "scores", "valid")
HEADINGS = {"stablehlo": "StableHLO", "saved_model": "TensorFlow SavedModel", "onnx": "ONNX"}
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


def readme_snippet(kind: str) -> str:
    """The python block after the README's bold heading for ``kind``."""
    text = open(README).read()
    pattern = rf"\*\*{re.escape(HEADINGS[kind])}\*\*.*?```python\n(.*?)```"
    return re.search(pattern, text, re.S).group(1)


def main(kind, directory, inputs_path, out_path, batch=None):
    sys.meta_path.insert(0, Uninstalled(FORBIDDEN[kind]))
    lines = readme_snippet(kind).replace("exported/", f"{directory}/").splitlines()
    first_call = next(i for i, line in enumerate(lines) if line.startswith("out ="))
    scope = {}
    exec("\n".join(lines[:first_call]), scope)  # noqa: S102 - the README's example
    call = compile("\n".join(lines[first_call:]), "README", "exec")
    inputs = np.load(inputs_path)
    images, scales = inputs["images"], inputs["scales"]
    batch = int(batch) if batch else len(images)
    parts = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        fill = batch - len(chunk)
        scope["images"] = np.concatenate([chunk, np.zeros((fill, *chunk.shape[1:]), np.uint8)])
        ones = np.ones((fill, 2), np.float32)
        scope["scales"] = np.concatenate([scales[start : start + batch], ones])
        exec(call, scope)  # noqa: S102
        parts.append({k: np.asarray(scope["out"][k])[: len(chunk)] for k in OUTPUTS})
    np.savez(out_path, **{k: np.concatenate([p[k] for p in parts]) for k in OUTPUTS})
    assert not [m for m in FORBIDDEN[kind] if m in sys.modules]


if __name__ == "__main__":
    main(*sys.argv[1:])
