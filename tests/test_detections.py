"""The test-time rule: per-class decode, score threshold, class-wise NMS, top D."""

import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax.detections import detections

STDS = (0.1, 0.1, 0.2, 0.2)


def _logits(probabilities):
    return jnp.log(jnp.asarray(probabilities, jnp.float32))


def test_hand_worked_case():
    # 3 rois, 2 object classes (K = 3 with background), zero deltas: boxes are the rois.
    rois = jnp.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 40, 60]], jnp.float32)
    cls_logits = _logits(
        [
            [0.1, 0.8, 0.1],  # class 0 at 0.8
            [0.1, 0.7, 0.2],  # class 0 at 0.7: IoU 0.68 with roi 0, suppressed; class 1 at 0.2
            [0.5, 0.02, 0.48],  # class 0 below the threshold; class 1 at 0.48
        ]
    )
    out = detections(
        cls_logits,
        jnp.zeros((3, 3, 4)),
        rois,
        jnp.array([True, True, True]),
        jnp.array([30, 50]),  # the third roi is clipped to the 30 x 50 image
        delta_stds=STDS,
        score_threshold=0.05,
        nms_iou=0.5,
        max_detections=4,
    )
    np.testing.assert_array_equal(out["valid"], [True, True, True, False])
    np.testing.assert_array_equal(out["classes"], [0, 1, 1, 0])
    np.testing.assert_allclose(out["scores"], [0.8, 0.48, 0.2, 0.0], rtol=1e-5)
    np.testing.assert_allclose(
        out["boxes"], [[0, 0, 10, 10], [20, 20, 30, 50], [1, 1, 11, 11], [0, 0, 0, 0]]
    )


def test_deltas_are_unnormalised_and_masked_rois_never_detect():
    rois = jnp.array([[10, 10, 20, 20], [0, 0, 5, 5]], jnp.float32)
    deltas = jnp.zeros((2, 2, 4)).at[0, 1, 0].set(1.0)  # dy = 1 * 0.1 * height 10 = 1 px
    out = jax.jit(
        lambda *a: detections(
            *a, delta_stds=STDS, score_threshold=0.05, nms_iou=0.5, max_detections=2
        )
    )(
        _logits([[0.1, 0.9], [0.1, 0.9]]),
        deltas,
        rois,
        jnp.array([True, False]),
        jnp.array([64, 64]),
    )
    np.testing.assert_array_equal(out["valid"], [True, False])
    np.testing.assert_allclose(out["boxes"][0], [11, 10, 21, 20], atol=1e-5)
