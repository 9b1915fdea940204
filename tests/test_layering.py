"""Dependencies point down: inference, evaluation and the workdir never import training code."""

import subprocess
import sys
import textwrap


def test_inference_and_evaluation_import_no_training_code_and_no_optax():
    # A fresh interpreter: what this test process imported says nothing about the packages.
    code = textwrap.dedent(
        """
        import sys
        import frcnn_jax.inference.detector, frcnn_jax.inference.predict
        import frcnn_jax.evaluation.run, frcnn_jax.workdir
        from frcnn_jax import Detector
        bad = sorted(m for m in sys.modules if m.startswith(("frcnn_jax.training", "optax")))
        print("IMPORTED", bad)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "IMPORTED []" in out, out


def test_the_box_library_imports_neither_tensorflow_nor_the_model():
    code = (
        "import sys; import frcnn_jax.boxes, frcnn_jax.nms, frcnn_jax.roi_ops, frcnn_jax.targets;"
        "print('IMPORTED', sorted(m for m in sys.modules if m.startswith(('tensorflow', "
        "'frcnn_jax.models', 'flax'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "IMPORTED []" in out, out
