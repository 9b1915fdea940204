"""The README's box-library example runs and does what its comments say."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_box_library_example_runs():
    text = open(README).read()
    code = re.search(r"## The box library\n\n```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(code, scope)  # noqa: S102 - our own README
    assert scope["base"].shape == (9, 4)
    assert scope["all_anchors"].shape == (38 * 63 * 9, 4)
    assert scope["labels"].shape == (38 * 63 * 9,) and int((scope["labels"] == 1).sum()) >= 1
    assert scope["iou"].shape == (5, 2)
    np.testing.assert_allclose(scope["back"], scope["all_anchors"], atol=1e-3)
    assert scope["rois"].shape == (2000, 4) and scope["keep"].shape == (300,)
    assert scope["pooled"].shape == (128, 7, 7, 512)
