"""Command-line parsing shared by train.py, eval.py and the ``python -m frcnn_jax.*`` commands:
a mistyped ``--config.FIELD=...`` is one line naming the flag and the closest field, not a
traceback from inside ml_collections."""

from __future__ import annotations

import os
import re
import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
    """``absl.app.run(main, flags_parser=parse_flags)``: absl's parsing, with config errors
    (unknown field, value of the wrong type) turned into one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        program = os.path.basename(argv[0]) if argv else "frcnn_jax"
        message = re.sub(r"\s+", " ", str(e).replace("\\n", " ")).strip(" '\"")
        message = message.replace("\\'", "'").replace('\\"', '"')
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and _mentions(a, e)]
        where = f"{bad[0]}: " if bad else ""
        print(f"{program}: error: {where}{message}", file=sys.stderr)
        sys.exit(2)


def _mentions(arg: str, error: Exception) -> bool:
    """Whether the error message names the last field of ``--config.a.b=...``."""
    field = arg.split("=")[0].rsplit(".", 1)[-1]
    return f"'{field}'" in str(error) or f'"{field}"' in str(error)
