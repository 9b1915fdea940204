"""The run directory ``train.py`` writes and everything else reads.

``WORKDIR/config.json`` (the full config), ``WORKDIR/class_names.json`` (index = 0-based class
id) and ``WORKDIR/checkpoints/<step>/`` (Orbax). Each checkpoint holds two items: ``model``
(``{"params", "frozen"}``, all that inference needs) and ``train`` (the optimizer state, step
and anything else training resumes from). Evaluation, the ``Detector`` and the predict command
restore the ``model`` item alone: no optimizer is built to read a checkpoint.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed at any moment (SIGKILL included) leaves only whole checkpoints behind. Every way a
workdir can be wrong (missing files, no such step, unreadable checkpoint, another model or
class list) becomes one ``WorkdirError`` naming the file, the step or the parameter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from frcnn_jax.models import build_model, init_variables
from frcnn_jax.models.faster_rcnn import FasterRCNN

CONFIG_FILE = "config.json"
CLASS_NAMES_FILE = "class_names.json"
CHECKPOINTS = "checkpoints"
MODEL_ITEM, TRAIN_ITEM = "model", "train"
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
    return os.path.abspath(os.path.join(workdir, CHECKPOINTS))


class Checkpointer:
    """``ocp.CheckpointManager`` over ``WORKDIR/checkpoints``: items ``model`` and ``train``."""

    def __init__(self, workdir: str, *, keep: int = 3):
        self.directory = checkpoint_dir(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                MODEL_ITEM: ocp.StandardCheckpointHandler(),
                TRAIN_ITEM: ocp.StandardCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, *, model: dict, train: dict, force: bool = False) -> bool:
        """Starts an asynchronous save of step ``step``; False if it exists already."""
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{MODEL_ITEM: ocp.args.StandardSave(model), TRAIN_ITEM: ocp.args.StandardSave(train)}
        )
        return self._manager.save(step, args=args, force=force)

    def restore(self, step: int, **targets) -> dict:
        """The items named in ``targets`` (``model=``, ``train=``: abstract or concrete trees
        of the saved structure) of checkpoint ``step``, as ``{name: tree}``."""
        if step not in self.all_steps():
            raise MissingError(
                f"no checkpoint for step {step} in {self.directory}; "
                f"steps found: {self.all_steps() or 'none'}"
            )
        # Whole arrays on this process's first device, whatever the saving run's topology
        # (a multi-process run saves global arrays; Orbax needs a target sharding for them).
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {
            name: jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), tree
            )
            for name, tree in targets.items()
        }
        args = ocp.args.Composite(
            **{name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        )
        restored = self._manager.restore(step, args=args)
        return {name: restored[name] for name in targets}

    def stored_model_shapes(self, step: int) -> dict[str, tuple[int, ...]] | None:
        """Shapes of the ``model`` item's arrays from its metadata; None if unreadable."""
        try:
            metadata = self._manager.item_metadata(step)
            tree = metadata[MODEL_ITEM]
        except Exception:  # noqa: BLE001 (any failure means: cannot be read)
            return None
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict) or "params" not in tree:
            return None
        return _shapes({"params": tree["params"], "frozen": tree.get("frozen") or {}})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_run_info(workdir: str, config: ml_collections.ConfigDict, class_names) -> None:
    """config.json and class_names.json: what eval.py and Detector need to rebuild the model."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, CLASS_NAMES_FILE), "w") as f:
        json.dump(list(class_names), f)


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The training config and class names that ``train.py`` wrote into ``workdir``.

    Raises:
      MissingError: naming the missing file (or the missing workdir).
      UnreadableError: naming an unreadable file.
    """
    if not os.path.isdir(workdir):
        raise MissingError(f"workdir {workdir} does not exist")
    loaded = []
    for name in (CONFIG_FILE, CLASS_NAMES_FILE):
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
            f"{os.path.join(workdir, CLASS_NAMES_FILE)} must hold a list of class names"
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
    workdir: str, model: FasterRCNN, *, step: int | None = None
) -> tuple[dict, int]:
    """``({"params", "frozen"}, step)`` of checkpoint ``step`` (default: the latest) of a workdir.

    ``model`` must have the architecture that was trained. Only the checkpoint's ``model``
    item is read; nothing is initialised or compiled before its shapes are checked.

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
    checkpointer = Checkpointer(workdir)
    try:
        steps = checkpointer.all_steps()
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
        abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
        stored = checkpointer.stored_model_shapes(step)
        if stored is None:
            raise UnreadableError(
                f"{where} cannot be read: its metadata is missing or corrupt (an interrupted "
                f"copy?). {_pick_another(others)}"
            )
        _check_shapes(_shapes(abstract), stored, where=where, num_classes=model.num_classes)
        try:
            variables = checkpointer.restore(step, model=abstract)[MODEL_ITEM]
        except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many types)
            raise UnreadableError(
                f"{where} cannot be read ({type(e).__name__}: {str(e)[:300]}); it may be "
                f"incomplete or corrupt. {_pick_another(others)}"
            ) from e
    finally:
        checkpointer.close()
    return {"params": variables["params"], "frozen": variables["frozen"]}, step


def load_model(
    workdir: str, *, step: int | None = None
) -> tuple[FasterRCNN, dict, ml_collections.ConfigDict, tuple[str, ...], int]:
    """``(model, variables, config, class_names, step)`` rebuilt from a training workdir."""
    config, class_names = load_run(workdir)
    model = build_model(config.model, num_classes=len(class_names))
    variables, step = restore_variables(workdir, model, step=step)
    return model, variables, config, class_names, step
