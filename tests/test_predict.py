"""python -m frcnn_jax.predict: JSON and PNG per image, unreadable files, bad arguments."""

import json

import numpy as np
import pytest
from PIL import Image

from frcnn_jax.inference import predict
from tests.tiny_workdir import make_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    make_workdir(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(folder / "first.png")
    Image.fromarray(rng.integers(0, 255, (40, 30), np.uint8)).save(folder / "second.jpg")
    (folder / "notes.txt").write_text("not an image, and not listed from the folder")
    return folder


def test_writes_json_and_png_per_image_and_reports_unreadable_files(
    workdir, images, tmp_path, capsys
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    status = predict.main(
        [
            str(images / "first.png"),
            str(broken),
            str(images / "second.jpg"),
            f"--workdir={workdir}",
            "--score_threshold=0.0",
            f"--output={out}",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "first.png" not in err
    assert sorted(p.name for p in out.iterdir()) == [
        "first.json",
        "first.png",
        "second.json",
        "second.png",
    ]
    record = json.loads((out / "first.json").read_text())
    assert record["image"] == str(images / "first.png") and record["image_size"] == [48, 64]
    assert record["detections"], "an untrained model still returns low-score detections"
    detection = record["detections"][0]
    assert set(detection) == {"box", "class", "class_name", "score"}
    ymin, xmin, ymax, xmax = detection["box"]
    assert 0 <= ymin <= ymax <= 48 and 0 <= xmin <= xmax <= 64
    with Image.open(out / "second.png") as picture:  # upscaled for readable labels
        assert picture.mode == "RGB" and picture.size == (30 * 13, 40 * 13)


def test_directory_input_and_jsonl(workdir, images, tmp_path, capsys):
    out = tmp_path / "out"
    status = predict.main(
        [str(images), f"--workdir={workdir}", f"--output={out}", "--jsonl", "--no_images"]
    )
    assert status == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image"] for line in lines] == [
        str(images / "first.png"),
        str(images / "second.jpg"),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl"]
    assert "2 of 2 image(s)" in capsys.readouterr().out


def test_empty_input_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--workdir=w", "--output=o"])
    assert exit_info.value.code == 2
    assert "IMAGE_OR_DIR" in capsys.readouterr().err


def test_empty_directory_and_missing_paths_are_named(workdir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict.main([str(tmp_path / "empty"), f"--workdir={workdir}", "--output=o"]) == 2
    assert "no images in directory" in capsys.readouterr().err
    assert predict.main([str(tmp_path / "nope.png"), f"--workdir={workdir}", "--output=o"]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_missing_workdir_is_named(images, tmp_path, capsys):
    status = predict.main([str(images), f"--workdir={tmp_path / 'nowhere'}", "--output=o"])
    assert status == 2 and "nowhere does not exist" in capsys.readouterr().err


def test_output_names_are_distinct():
    assert predict.output_names(["a/x.jpg", "b/x.png", "x", "y.png"]) == ["x", "x_1", "x_2", "y"]
