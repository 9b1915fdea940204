"""eval.py's evaluation: metrics.json and friends, the VOC box convention, bad workdirs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from frcnn_jax import workdir as workdir_lib
from frcnn_jax.data import synthetic
from frcnn_jax.evaluation import run as evaluate_run
from tests.tiny import tiny_config
from tests.tiny_workdir import make_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    make_workdir(path, steps=(2, 4))
    return str(path)


def test_evaluate_checkpoint_writes_metrics_detections_and_pr_curves(workdir, capsys):
    config = tiny_config()
    metrics = evaluate_run.evaluate_checkpoint(config, workdir, step=2, progress=False)
    out = capsys.readouterr().out
    for name in synthetic.CLASS_NAMES:
        assert name in out
    assert "VOC07 AP" in out and "mAP" in out

    written = json.loads(open(os.path.join(workdir, "eval", "metrics.json")).read())
    assert written == metrics
    assert set(written) >= {
        "step",
        "voc07_map",
        "voc_map",
        "coco",
        "per_class",
        "images",
        "images_per_second",
    }
    assert written["step"] == 2 and written["images"] == config.data.synthetic["num_eval"]
    assert written["images_per_second"] > 0
    assert list(written["per_class"]) == list(synthetic.CLASS_NAMES)
    assert set(written["coco"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    for value in [written["voc07_map"], *written["per_class"].values()]:
        assert value is None or 0.0 <= value <= 1.0

    detections = json.loads(open(os.path.join(workdir, "eval", "detections.json")).read())
    assert detections["class_names"] == list(synthetic.CLASS_NAMES)
    assert len(detections["images"]) == written["images"]
    first = detections["images"][0]
    assert len(first["boxes"]) == len(first["classes"]) == len(first["scores"])
    assert os.path.getsize(os.path.join(workdir, "eval", "pr_curves.png")) > 0


def _result(pred_boxes, gt_boxes):
    return {
        "boxes": np.array(pred_boxes, np.float32),
        "classes": np.zeros(len(pred_boxes), int),
        "scores": np.linspace(0.9, 0.5, len(pred_boxes)),
        "gt_boxes": np.array(gt_boxes, np.float32),
        "gt_classes": np.zeros(len(gt_boxes), int),
        "gt_difficult": np.zeros(len(gt_boxes), bool),
    }


def test_score_uses_continuous_boxes_with_the_devkit_rules():
    gt = [[0, 0, 10, 10]]
    # Continuous IoU 49 / 100 < 0.5: a false positive. Taken as inclusive pixels without the
    # shift it would be 11 * 5.9 / 121 = 0.54, a true positive.
    assert evaluate_run.score([_result([[0, 0, 10, 4.9]], gt)], num_classes=1)["voc07_map"] == 0
    # IoU exactly 0.5 is a hit (devkit: ovmax >= 0.5); a duplicate is a false positive.
    scores = evaluate_run.score([_result([[0, 0, 10, 5], [0, 0, 10, 10]], gt)], num_classes=2)
    assert scores["ap"][0] == pytest.approx(1.0) and np.isnan(scores["ap"][1])
    np.testing.assert_allclose(scores["precisions"][0], [1.0, 0.5])
    assert scores["voc_map"] == pytest.approx(1.0)  # mean over classes with gt
    assert scores["coco"]["AP50"] == pytest.approx(1.0)


def test_summary_scalars_leave_out_undefined_values():
    metrics = {"voc07_map": 0.5, "voc_map": None, "coco": {"AP": 0.25, "APs": None}}
    assert evaluate_run.summary_scalars(metrics) == {"eval/voc07_map": 0.5, "eval/coco_AP": 0.25}


def test_ap_table_shows_na_for_classes_without_gt():
    table = evaluate_run.ap_table(
        {
            "per_class": {"cat": 0.5, "dog": None},
            "per_class_voc": {"cat": 0.25, "dog": None},
            "voc07_map": 0.5,
            "voc_map": 0.25,
        }
    )
    assert "cat" in table and "n/a" in table and "0.5000" in table and "0.2500" in table


def test_a_config_with_other_classes_is_refused_before_any_work(workdir, tmp_path):
    config = tiny_config(
        **{"data.name": "voc_dir", "data.root": str(tmp_path), "data.classes": "voc"}
    )
    with pytest.raises(workdir_lib.MismatchError, match=r"4 classes.*20 classes"):
        evaluate_run.evaluate_checkpoint(config, workdir, progress=False)


def test_eval_py_names_the_missing_step_and_the_steps_found(workdir):
    proc = subprocess.run(
        [
            sys.executable,
            "eval.py",
            "--config=configs/synthetic.py",
            f"--workdir={workdir}",
            "--checkpoint=7",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "no checkpoint for step 7" in proc.stderr and "[2, 4]" in proc.stderr


def test_the_trained_architecture_comes_from_the_workdir(tmp_path, monkeypatch):
    # Trained with Caffe normalisation and RoIPool; evaluated with a config that has
    # neither (same parameter shapes, so only the workdir can tell): the workdir wins,
    # while test-time options come from the given config.
    workdir = tmp_path / "caffe"
    make_workdir(
        workdir, tiny_config(**{"model.image_normalization": "caffe", "model.roi.op": "pool"})
    )
    seen = {}

    def fake_run(model, variables, config, **kwargs):
        seen["model"] = model
        return {
            "images": 0,
            "images_per_second": 0.0,
            "coco": {},
            "voc07_map": None,
            "voc_map": None,
            "per_class": {},
            "per_class_voc": {},
            "step": kwargs["step"],
        }

    monkeypatch.setattr(evaluate_run, "run_evaluation", fake_run)
    monkeypatch.setattr(evaluate_run, "ap_table", lambda metrics: "")
    config = tiny_config(**{"model.test.score_threshold": 0.3})
    evaluate_run.evaluate_checkpoint(config, str(workdir), progress=False)
    assert seen["model"].image_normalization == "caffe" and seen["model"].roi_options.op == "pool"
    assert seen["model"].test_options.score_threshold == 0.3
