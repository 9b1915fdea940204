"""Entry points turn a mistyped config flag into one line naming it, not a traceback."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "flag,expected",
    [
        ("--config.model.rpn.chanels=3", 'error: --config.model.rpn.chanels: .*"channels"'),
        ("--config.batch_size=abc", "error: flag --config.batch_size=abc: invalid literal"),
    ],
)
def test_bad_config_flag_is_one_line(flag, expected, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/synthetic.py",
            flag,
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(expected, proc.stderr), proc.stderr[-2000:]
    assert not os.listdir(tmp_path)  # nothing written before the config is known to be good
