"""Evaluates a trained Faster R-CNN. Example (after the README's training command):

  python eval.py --config=configs/synthetic.py --workdir=runs/synthetic [--checkpoint=STEP]

Restores the latest checkpoint of ``--workdir`` (or ``--checkpoint``), runs batched inference
over ``config.data.eval_split``, prints a per-class AP table and writes ``WORKDIR/eval/``:
metrics.json (VOC07 / VOC / COCO metrics), detections.json and pr_curves.png.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from frcnn_jax import host_memory

if __name__ == "__main__":  # before JAX starts its threads: faster CPU inference (host_memory.py)
    host_memory.tune_malloc()

from frcnn_jax import cli, workdir  # noqa: E402
from frcnn_jax.data import DataError  # noqa: E402
from frcnn_jax.evaluation import run  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "The training configuration.")
flags.DEFINE_string("workdir", None, "Training directory holding the checkpoints.")
flags.DEFINE_integer("checkpoint", None, "Step of the checkpoint to evaluate (default: latest).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        run.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, step=FLAGS.checkpoint)
    except (workdir.WorkdirError, DataError) as e:
        sys.exit(f"eval.py: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
