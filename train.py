"""Trains Faster R-CNN. Example (no download, CPU, minutes):

  python train.py --config=configs/synthetic.py --workdir=runs/synthetic

Any config field can be overridden, e.g. ``--config.batch_size=16``. Training
resumes from the latest checkpoint in ``--workdir``.

Exit status: 0 done; 75 (EX_TEMPFAIL) preempted by SIGTERM after a complete checkpoint, so
running the same command again continues exactly; 1 an error; 2 a bad flag.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from frcnn_jax import host_memory

if __name__ == "__main__":  # before JAX and TensorFlow start their threads: faster CPU training
    host_memory.tune_malloc()  # (host_memory.py; FRCNN_JAX_TUNE_MALLOC=0 turns it off)

from frcnn_jax import cli, logs, preemption  # noqa: E402
from frcnn_jax.data import DataError  # noqa: E402
from frcnn_jax.training import loop  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Training configuration file.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_bool("verbose_logs", False, "Keep Orbax's, clu's and JAX's INFO logs.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logs.quiet_third_party(verbose=FLAGS.verbose_logs)
    try:
        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except loop.Preempted as e:
        logging.warning("%s", e)
        sys.exit(preemption.EXIT_PREEMPTED)
    except DataError as e:  # the user's dataset: one line naming the file, not a traceback
        sys.exit(f"train.py: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
