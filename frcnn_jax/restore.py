"""A trained model from a training workdir: its config, class names and checkpoints.

``train.py`` leaves in ``WORKDIR``: ``config.json`` (the full config), ``class_names.json``
(index = 0-based label) and ``checkpoints/<step>/`` (Orbax). Evaluation, the ``Detector`` and
the predict command rebuild the model from them with the functions here, and turn every way a
workdir can be wrong (missing files, no such step, unreadable checkpoint, another model or
another class list) into one error message that names the file, the step or the parameter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from frcnn_jax import train_lib
from frcnn_jax.checkpoint import Checkpointer
from frcnn_jax.models.faster_rcnn import FasterRCNN

# How many mismatching parameters an error message lists before "...".
_MAX_LISTED = 5


class WorkdirError(Exception):
    """A training workdir that cannot be used; the message says what is wrong and where."""


class MissingError(WorkdirError, FileNotFoundError):
    """A missing workdir, run file or checkpoint step."""


class MismatchError(WorkdirError, ValueError):
    """A workdir trained with another config (class list, backbone or head sizes)."""


class UnreadableError(WorkdirError, RuntimeError):
    """A run file or checkpoint that exists but cannot be read (incomplete or corrupt)."""


def checkpoint_dir(workdir: str) -> str:
    """Absolute path of the workdir's checkpoints (Orbax rejects relative paths)."""
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The training config and class names that ``train.py`` wrote into ``workdir``.

    Raises:
      MissingError: naming the missing file (or the missing workdir).
      UnreadableError: naming an unreadable file.
    """
    if not os.path.isdir(workdir):
        raise MissingError(f"workdir {workdir} does not exist")
    loaded = []
    for name in ("config.json", "class_names.json"):
        path = os.path.join(workdir, name)
        if not os.path.isfile(path):
            raise MissingError(
                f"{path} is missing: {workdir} is not a training workdir (train.py writes "
                "config.json and class_names.json there when it starts)"
            )
        try:
            with open(path) as f:
                loaded.append(json.load(f))
        except (OSError, ValueError) as e:
            raise UnreadableError(f"cannot read {path}: {e}") from e
    config, class_names = loaded
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise UnreadableError(
            f"{os.path.join(workdir, 'class_names.json')} must hold a list of class names"
        )
    return ml_collections.ConfigDict(config), tuple(class_names)


def check_class_names(workdir: str, run_names: Sequence[str], config_names: Sequence[str]):
    """Raises MismatchError when a config's dataset classes differ from a workdir's."""
    if tuple(run_names) != tuple(config_names):
        raise MismatchError(
            f"workdir {workdir} was trained on {len(run_names)} classes {list(run_names)}, but "
            f"the config's dataset has {len(config_names)} classes {list(config_names)}: "
            "evaluate with the config the workdir was trained with"
        )


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def _stored_shapes(directory: str, step: int) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the arrays of checkpoint ``step`` from its metadata; None if unreadable."""
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    try:
        metadata = manager.item_metadata(step)
    except Exception:  # noqa: BLE001 (any failure means: cannot be read)
        return None
    finally:
        manager.close()
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or "params" not in tree:
        return None
    return _shapes({"params": tree["params"], "frozen": tree.get("frozen") or {}})


def _pick_another(others: list[int]) -> str:
    if not others:
        return "No other checkpoint steps were found."
    return f"Other steps found: {others}; pick one with --checkpoint=STEP (Python: step=STEP)."


def _check_shapes(expected, stored, *, where: str, num_classes: int) -> None:
    """Raises MismatchError listing parameters missing, extra or of another shape."""
    problems = [f"{k} missing from the checkpoint" for k in expected if k not in stored]
    problems += [f"{k} in the checkpoint is not in the model" for k in stored if k not in expected]
    problems += [
        f"{k} has shape {stored[k]} in the checkpoint but {expected[k]} in the model"
        for k in expected
        if k in stored and stored[k] != expected[k]
    ]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED]) + (
            "; ..." if len(problems) > _MAX_LISTED else ""
        )
        raise MismatchError(
            f"{where} does not fit the model built for {num_classes} classes: {listed}. Was the "
            "workdir trained with another config (another backbone, head sizes or class list)?"
        )


def restore_variables(
    workdir: str,
    model: FasterRCNN,
    config: ml_collections.ConfigDict,
    *,
    step: int | None = None,
) -> tuple[dict, int]:
    """``({"params", "frozen"}, step)`` of checkpoint ``step`` (default: the latest) of a workdir.

    ``config`` is the training config (it defines the optimizer state stored beside the
    parameters); ``model`` must have the architecture that was trained.

    Raises:
      MissingError: no checkpoint, or none for ``step``; the message lists the steps found.
      MismatchError: the checkpoint holds other parameter shapes (another config or classes).
      UnreadableError: the checkpoint exists but cannot be read (incomplete or corrupt).
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise MissingError(
            f"no checkpoints in {workdir}: {directory} does not exist (train.py saves every "
            "config.checkpoint_every_steps steps and at the end)"
        )
    checkpointer = Checkpointer(directory)
    try:
        steps = sorted(checkpointer.all_steps())
        if not steps:
            raise MissingError(f"no checkpoint in {directory}: steps found: none")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise MissingError(
                f"no checkpoint for step {step} in {directory}; steps found: {steps}"
            )
        where = f"checkpoint step {step} in {directory}"
        others = [s for s in steps if s != step]

        def fresh_state():
            variables = train_lib.init_variables(model, jax.random.key(0))
            return train_lib.create_train_state(config, model, variables)[0]

        # Shapes only: nothing is initialised or compiled before the checkpoint is read.
        abstract = jax.eval_shape(fresh_state)
        stored = _stored_shapes(directory, step)
        if stored is None:
            raise UnreadableError(
                f"{where} cannot be read: its metadata is missing or corrupt (an interrupted "
                f"copy?). {_pick_another(others)}"
            )
        expected = _shapes({"params": abstract.params, "frozen": abstract.frozen})
        _check_shapes(expected, stored, where=where, num_classes=model.num_classes)
        try:
            state = checkpointer.restore(abstract, step)
        except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many types)
            raise UnreadableError(
                f"{where} cannot be read ({type(e).__name__}: {str(e)[:300]}); it may be "
                f"incomplete or corrupt. {_pick_another(others)}"
            ) from e
    finally:
        checkpointer.close()
    return {"params": state.params, "frozen": state.frozen}, int(state.step)


def load_model(
    workdir: str, *, step: int | None = None
) -> tuple[FasterRCNN, dict, ml_collections.ConfigDict, tuple[str, ...], int]:
    """``(model, variables, config, class_names, step)`` rebuilt from a training workdir."""
    config, class_names = load_run(workdir)
    model = train_lib.build_model(config.model, num_classes=len(class_names))
    variables, step = restore_variables(workdir, model, config, step=step)
    return model, variables, config, class_names, step
