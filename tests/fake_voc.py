"""Tiny fake Pascal VOC folders for the data tests (nothing is downloaded).

`write_voc_layout` writes ROOT/{JPEGImages,Annotations,ImageSets/Main} exactly as the VOC devkit
does: XML boxes are 1-based inclusive pixel indices, so a box covering the whole W x H image is
xmin=1, ymin=1, xmax=W, ymax=H. The same layout under VOCdevkit/VOC2007 is what the real tfds VOC
builder reads (`make_voc_devkit`).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class FakeObject:
    """One annotated object; coordinates are devkit 1-based inclusive pixels."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"


@dataclasses.dataclass(frozen=True)
class FakeExample:
    image_id: str
    height: int
    width: int
    objects: tuple[FakeObject, ...] = ()


def image_pixels(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3] smooth pattern (JPEG-friendly, left and right halves differ)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    offset = rng.integers(0, 64, size=3)
    channels = [(xs * 200 // max(width, 1) + offset[0]), (ys * 200 // max(height, 1) + offset[1])]
    channels.append(np.full_like(xs, 100 + offset[2]))
    return np.stack(channels, axis=-1).astype(np.uint8)


def encode_image(pixels: np.ndarray, *, format: str = "JPEG", mode: str = "RGB") -> bytes:
    """Encodes uint8 [H, W, 3] pixels as `format` after converting to PIL `mode` (L, RGBA, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=format)
    return buffer.getvalue()


def annotation_xml(example: FakeExample, *, filename: str | None = None, depth: int = 3) -> str:
    """A devkit-style annotation XML string for `example`."""
    objects = "".join(
        f"""
  <object>
    <name>{escape(obj.name)}</name>
    <pose>{escape(obj.pose)}</pose>
    <truncated>{int(obj.truncated)}</truncated>
    <difficult>{int(obj.difficult)}</difficult>
    <bndbox>
      <xmin>{obj.xmin:g}</xmin>
      <ymin>{obj.ymin:g}</ymin>
      <xmax>{obj.xmax:g}</xmax>
      <ymax>{obj.ymax:g}</ymax>
    </bndbox>
  </object>"""
        for obj in example.objects
    )
    return f"""<annotation>
  <folder>VOC2007</folder>
  <filename>{escape(filename or example.image_id + ".jpg")}</filename>
  <size>
    <width>{example.width}</width>
    <height>{example.height}</height>
    <depth>{depth}</depth>
  </size>
  <segmented>0</segmented>{objects}
</annotation>
"""


def write_voc_layout(
    root: pathlib.Path,
    examples: Sequence[FakeExample],
    splits: Mapping[str, Iterable[str]],
    *,
    classes: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes ROOT/{JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/<split>.txt}.

    `classes`, when given, is also written to ROOT/classes.txt (one name per line).
    Returns `root`.
    """
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, example in enumerate(examples):
        pixels = image_pixels(example.height, example.width, seed=index)
        (root / "JPEGImages" / f"{example.image_id}.jpg").write_bytes(encode_image(pixels))
        (root / "Annotations" / f"{example.image_id}.xml").write_text(annotation_xml(example))
    for split, image_ids in splits.items():
        lines = "".join(f"{image_id}\n" for image_id in image_ids)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(lines)
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    return root


# VOC2007 stand-ins: the train split holds two images, validation one, test one.
VOC2007_EXAMPLES = (
    FakeExample(
        "000001",
        height=40,
        width=60,
        objects=(
            # Whole image: devkit (1, 1)-(60, 40) inclusive == continuous [0, 60] x [0, 40].
            FakeObject("dog", xmin=1, ymin=1, xmax=60, ymax=40),
            FakeObject("person", xmin=11, ymin=5, xmax=30, ymax=24, difficult=True),
        ),
    ),
    FakeExample(
        "000002",
        height=32,
        width=48,
        objects=(FakeObject("car", xmin=2, ymin=3, xmax=20, ymax=30, truncated=True),),
    ),
    FakeExample(
        "000003",
        height=50,
        width=30,
        objects=(FakeObject("tvmonitor", xmin=5, ymin=10, xmax=25, ymax=45),),
    ),
    FakeExample(
        "000004",
        height=36,
        width=36,
        objects=(
            FakeObject("aeroplane", xmin=1, ymin=1, xmax=10, ymax=12),
            FakeObject("cat", xmin=20, ymin=20, xmax=36, ymax=36),
        ),
    ),
)
VOC2007_SPLITS = {
    "train": ["000001", "000002"],
    "val": ["000003"],
    "trainval": ["000001", "000002", "000003"],
    "test": ["000004"],
}


# VOC2012 stand-ins for the "07+12" union; its test split has no annotations in tfds.
VOC2012_EXAMPLES = (
    FakeExample("2008_000001", height=30, width=40, objects=(FakeObject("bird", 3, 4, 12, 20),)),
    FakeExample("2008_000002", height=24, width=24, objects=(FakeObject("sheep", 1, 1, 24, 24),)),
    FakeExample("2008_000003", height=20, width=28),
)
VOC2012_SPLITS = {
    "train": ["2008_000001"],
    "val": ["2008_000002"],
    "trainval": ["2008_000001", "2008_000002"],
    "test": ["2008_000003"],
}


def make_voc_devkit(base: pathlib.Path) -> pathlib.Path:
    """Writes base/VOCdevkit/VOC{2007,2012}/... with the examples above; returns `base`.

    The tfds builder reads `<extracted archive>/VOCdevkit/VOC<year>/...` for both the trainval and
    the test archive, so this one folder serves as every extracted archive of both years.
    """
    write_voc_layout(base / "VOCdevkit" / "VOC2007", VOC2007_EXAMPLES, VOC2007_SPLITS)
    write_voc_layout(base / "VOCdevkit" / "VOC2012", VOC2012_EXAMPLES, VOC2012_SPLITS)
    return base
