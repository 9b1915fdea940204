"""Checkpoints of the training state with Orbax: save every N steps, keep K, resume from the latest.

Orbax writes each checkpoint to a temporary folder and renames it when
complete, so a run killed at any moment (SIGKILL included) leaves only whole
checkpoints behind, and the next run resumes from the newest of them.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from frcnn_jax.train_lib import TrainState


def _saved_tree(state: TrainState) -> dict:
    """The parts of the state that are data (not the apply_fn / tx functions)."""
    return {
        "step": state.step,
        "params": state.params,
        "frozen": state.frozen,
        "opt_state": state.opt_state,
        "nonfinite_step": state.nonfinite_step,
    }


class Checkpointer:
    """Thin wrapper around ``ocp.CheckpointManager`` for ``TrainState``."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: TrainState, *, force: bool = False) -> bool:
        """Saves ``state`` at its step (asynchronously); returns whether a save started."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(_saved_tree(state)), force=force)

    def restore(self, state: TrainState, step: int | None = None) -> TrainState:
        """``state`` with its data replaced by checkpoint ``step`` (default: the latest).

        Raises:
          FileNotFoundError: naming the directory and the steps that exist.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; steps found: {steps or 'none'}"
            )
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _saved_tree(state))
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
        return state.replace(**restored)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
