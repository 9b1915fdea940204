"""Trains the tiny config in WORKDIR (argv[1]) for argv[2] steps; used by test_resume.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402

from frcnn_jax.training import loop  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    steps = int(sys.argv[2])
    config = tiny_config(
        num_train_steps=steps, checkpoint_every_steps=1, log_every_steps=1, keep_checkpoints=100
    )
    loop.train_and_evaluate(config, sys.argv[1])
