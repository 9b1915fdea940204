"""Detector: restoring a workdir, predicting on any input, boxes back in original pixels, errors."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from frcnn_jax import data as data_lib
from frcnn_jax import workdir as restore
from frcnn_jax.data import synthetic
from frcnn_jax.inference import visualize
from frcnn_jax.inference.detector import Detections, Detector, ImageReadError
from tests.tiny import tiny_config
from tests.tiny_workdir import make_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    make_workdir(path, steps=(2, 4))
    return str(path)


@pytest.fixture(scope="module")
def detector(workdir):
    return Detector.from_checkpoint(workdir, batch_size=4)


def _check(result, height, width):
    assert isinstance(result, Detections)
    assert result.image_size == (height, width)
    n = len(result)
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert result.classes.shape == (n,) and result.scores.shape == (n,)
    assert (result.boxes >= 0).all()
    assert (result.boxes[:, [0, 2]] <= height).all() and (result.boxes[:, [1, 3]] <= width).all()
    assert (np.diff(result.scores) <= 0).all()  # best first
    assert result.class_names == tuple(synthetic.CLASS_NAMES[c] for c in result.classes)


def test_from_checkpoint_restores_the_latest_step_and_the_class_names(detector):
    assert detector.step == 4
    assert detector.class_names == synthetic.CLASS_NAMES


def test_predict_accepts_paths_pil_and_arrays_of_any_size(detector, tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (50, 70, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 255, np.uint8)], -1)
    inputs = [
        str(tmp_path / "a.png"),
        Image.fromarray(rgb),
        rgb,
        rgba,
        rng.integers(0, 255, (90, 40), np.uint8),
    ]  # grayscale, portrait
    results = detector.predict(inputs, score_threshold=0.0)
    assert len(results) == 5
    for result, (h, w) in zip(results, [(50, 70)] * 4 + [(90, 40)]):
        _check(result, h, w)
    assert results[0].source == str(tmp_path / "a.png") and results[2].source is None
    # The same pixels give the same detections whatever the container.
    for other in results[1:4]:
        np.testing.assert_allclose(other.boxes, results[0].boxes, atol=1e-4)
        np.testing.assert_array_equal(other.classes, results[0].classes)
    single = detector.predict(rgb, score_threshold=0.0)
    assert isinstance(single, Detections)
    np.testing.assert_allclose(single.scores, results[0].scores, atol=1e-5)


def test_score_threshold_filters_and_results_serialise(detector):
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
    everything = detector.predict(image, score_threshold=0.0)
    assert len(everything) > 0  # an untrained head spreads ~1/5 probability on each class
    cut = float(np.median(everything.scores))
    kept = detector.predict(image, score_threshold=cut)
    assert len(kept) == int((everything.scores >= cut).sum()) and (kept.scores >= cut).all()
    record = json.loads(json.dumps(kept.to_dict()))
    assert record["image_size"] == [64, 64] and len(record["detections"]) == len(kept)
    assert set(record["detections"][0]) == {"box", "class", "class_name", "score"}


def test_compiled_programs_are_reused_per_batch_and_bucket_shape(detector):
    images = [np.zeros((h, w, 3), np.uint8) for h, w in ((64, 64), (30, 50), (64, 20))]
    detector.predict(images)  # one bucket (64, 64); 3 images padded to a batch of 4
    detector.predict(images[0])  # a batch of 1
    compiled = detector._predict_fn._cache_size()
    assert compiled <= 2
    detector.predict(images[::-1])
    detector.predict(images[1])
    assert detector._predict_fn._cache_size() == compiled


def test_preprocessing_matches_the_eval_pipeline(workdir):
    # Upscaling 64 -> 96 exercises the resize; the pipeline and the Detector must agree.
    config = tiny_config(**{"data.min_size": 96, "data.max_size": 96})
    batch = next(
        iter(
            data_lib.create_dataset(config.data, split="test", training=False, batch_size=1, seed=0)
        )
    )
    det = Detector.from_checkpoint(workdir)
    det = Detector(det.model, det.variables, det.class_names, min_size=96, max_size=96)
    raw = synthetic.render_example(0, split="test", **synthetic.render_options(config.data))
    padded, size, scales = det.preprocess(raw["image"])
    np.testing.assert_array_equal(padded, batch["images"][0])
    np.testing.assert_array_equal(size, batch["image_sizes"][0])
    np.testing.assert_allclose(scales, batch["scales"][0])


def test_boxes_are_mapped_back_to_original_pixels(detector, monkeypatch):
    det = Detector(
        detector.model, detector.variables, detector.class_names, min_size=64, max_size=128
    )
    seen = {}

    def fake_predict(variables, images, image_sizes, scales):
        seen["images"], seen["sizes"] = images.shape, np.asarray(image_sizes)
        boxes = np.zeros((images.shape[0], 3, 4), np.float32)
        # Resized-image pixels of image 0 (32 x 48, scaled x2 to 64 x 96):
        boxes[0, 0] = [10, 20, 30, 40]  # -> (5, 10, 15, 20)
        boxes[0, 1] = [60, 90, 64, 100]  # -> (30, 45, 32, 50), clipped to width 48
        # Image 1 (33 x 50): scale min(64 / 33, 128 / 50) gives 64 x 97, so sy = 64 / 33 and
        # sx = 97 / 50 differ; (32, 48.5, 64, 97) -> (16.5, 25, 33, 50).
        boxes[1, 0] = [32, 48.5, 64, 97]
        return {
            "boxes": boxes,
            "scores": np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]]),
            "classes": np.array([[1, 2, 0], [3, 0, 0]], np.int32),
            "valid": np.array([[True, True, False], [True, False, False]]),
        }

    monkeypatch.setattr(det, "_predict_fn", fake_predict)
    first, second = det.predict(
        [np.zeros((32, 48, 3), np.uint8), np.zeros((33, 50), np.uint8)], score_threshold=0.0
    )
    assert seen["images"] == (2, 64, 128, 3)  # bucket (64, 128) holds 64 x 96 and 64 x 97
    np.testing.assert_array_equal(seen["sizes"], [[64, 96], [64, 97]])
    np.testing.assert_allclose(first.boxes, [[5, 10, 15, 20], [30, 45, 32, 48]], atol=1e-5)
    assert first.class_names == ("ellipse", "triangle")
    np.testing.assert_allclose(second.boxes, [[16.5, 25, 33, 50]], atol=1e-4)
    assert second.classes.tolist() == [3] and second.scores.tolist() == [pytest.approx(0.7)]


def test_rpn_proposals_of_a_preprocessed_image_can_be_drawn(detector):
    image = np.random.default_rng(2).integers(0, 255, (48, 64, 3), np.uint8)
    padded, size, _ = detector.preprocess(image)
    rois, roi_mask = visualize.rpn_proposals(
        detector.model, detector.variables, padded[None], size[None]
    )
    assert rois.shape == (1, detector.model.test_options.post_nms_top_n, 4)
    assert roi_mask.shape == rois.shape[:2] and roi_mask.any()
    kept = rois[0][roi_mask[0]]
    assert (kept >= 0).all() and (kept[:, 2] <= size[0]).all() and (kept[:, 3] <= size[1]).all()
    picture = visualize.draw_proposals(padded, rois[0], valid=roi_mask[0], min_display_size=0)
    assert picture.size == (padded.shape[1], padded.shape[0])


def test_bad_images_name_the_input(detector, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        detector.predict([np.zeros((8, 8, 3), np.uint8), str(bad)])
    with pytest.raises(ImageReadError, match="missing.png"):
        detector.predict(str(tmp_path / "missing.png"))
    with pytest.raises(ImageReadError, match="uint8"):
        detector.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageReadError, match=r"input 1.*shape"):
        detector.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(ValueError, match="empty list"):
        detector.predict([])


def test_missing_step_lists_the_steps_that_exist(workdir):
    with pytest.raises(FileNotFoundError, match=r"step 3 .*steps found: \[2, 4\]"):
        Detector.from_checkpoint(workdir, step=3)
    assert Detector.from_checkpoint(workdir, step=2).step == 2


def test_missing_run_files_and_checkpoints_are_named(workdir, tmp_path):
    with pytest.raises(restore.MissingError, match="does not exist"):
        Detector.from_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(restore.MissingError, match="config.json is missing"):
        Detector.from_checkpoint(str(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(restore.MissingError, match="checkpoints does not exist"):
        Detector.from_checkpoint(str(copy))
    os.makedirs(copy / "checkpoints")
    with pytest.raises(restore.MissingError, match="steps found: none"):
        Detector.from_checkpoint(str(copy))


def test_corrupt_checkpoint_is_named_with_the_other_steps(workdir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4" / "model")  # the item inference reads
    with pytest.raises(restore.UnreadableError, match=r"step 4 .*cannot be read.*\[2\]"):
        Detector.from_checkpoint(str(copy))


def test_class_count_mismatch_is_a_clear_error(workdir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / "class_names.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(restore.MismatchError, match=r"3 classes.*cls_score.*shape"):
        Detector.from_checkpoint(str(copy))


def test_relative_workdir_restores(workdir, monkeypatch):
    # Orbax rejects relative checkpoint paths; `eval.py --workdir=runs/x` must still work.
    monkeypatch.chdir(os.path.dirname(workdir))
    model, variables, _, _, step = restore.load_model(os.path.basename(workdir))
    assert step == 4 and model.num_classes == len(synthetic.CLASS_NAMES)
    assert "head" in variables["params"]
