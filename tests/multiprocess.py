"""Launching N Python processes of one JAX job on localhost, for tests.

Each process gets JAX_COORDINATOR_ADDRESS (a free localhost port), JAX_NUM_PROCESSES,
JAX_PROCESS_ID, JAX_PLATFORMS=cpu, a fixed number of CPU devices, and PYTHONPATH = the
repository root, so ``frcnn_jax.distributed.initialize()`` joins them into one job. Output goes
to files (a full pipe would block a process), each process leads its own session so a kill
reaches its children, and every exit path kills what is still running: a failed process would
otherwise leave the others waiting forever in a collective.

  with multiprocess.Job(["-c", SCRIPT], num_processes=2) as job:
      results = job.wait(timeout=60)        # raises JobError with every process's output
  results[0].stdout

or in one call: ``multiprocess.run(["-c", SCRIPT], num_processes=2, timeout=60)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TAIL = 3000  # characters of each process's output quoted in an error


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Result:
    """One finished process: its id in the job, exit status (-N: killed by signal N), output."""

    process_id: int
    returncode: int
    stdout: str
    stderr: str


class JobError(AssertionError):
    """A process failed or the job ran out of time; the message quotes every process's output."""


def _describe(results: Sequence[Result]) -> str:
    parts = []
    for r in results:
        parts.append(
            f"--- process {r.process_id}: exit {r.returncode}\n"
            f"stdout (tail):\n{r.stdout[-_TAIL:]}\nstderr (tail):\n{r.stderr[-_TAIL:]}"
        )
    return "\n".join(parts)


class Job:
    """N processes of ``python ARGS`` joined by JAX_* variables (module docstring).

    Args:
      args: arguments after the interpreter (["-c", code] or [script, arg, ...]); a callable
        ``args(process_id)`` gives per-process arguments.
      num_processes: processes in the job.
      devices_per_process: CPU devices each process has (XLA host platform device count).
      env: extra environment variables for every process (overrides the defaults above; None
        removes a variable).
      cwd: working directory, default the repository root.
    """

    def __init__(
        self,
        args,
        *,
        num_processes: int,
        devices_per_process: int = 1,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ):
        self.num_processes = num_processes
        self._dir = tempfile.TemporaryDirectory(prefix="multiprocess_")
        address = f"localhost:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        self._files = []
        base = dict(os.environ)
        # A parent's simulated device count must not leak into the workers.
        flags = [f for f in base.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        pythonpath = [REPO_ROOT] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]
        base.update(
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES=str(num_processes),
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=" ".join(flags),
            PYTHONPATH=os.pathsep.join(pythonpath),
            PYTHONUNBUFFERED="1",
        )
        try:
            for process_id in range(num_processes):
                process_env = {**base, "JAX_PROCESS_ID": str(process_id), **(env or {})}
                process_env = {k: v for k, v in process_env.items() if v is not None}
                out = open(os.path.join(self._dir.name, f"{process_id}.out"), "w+")  # noqa: SIM115
                err = open(os.path.join(self._dir.name, f"{process_id}.err"), "w+")  # noqa: SIM115
                self._files.append((out, err))
                argv = args(process_id) if callable(args) else list(args)
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, *argv],
                        env=process_env,
                        cwd=cwd or REPO_ROOT,
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_signal(self, sig: int, process_ids: Sequence[int] | None = None) -> None:
        """Sends ``sig`` to the given processes (default all) that are still running."""
        for i in range(self.num_processes) if process_ids is None else process_ids:
            if self.processes[i].poll() is None:
                self.processes[i].send_signal(sig)

    def output(self, process_id: int) -> tuple[str, str]:
        """(stdout, stderr) written so far by a process."""
        out, err = self._files[process_id]
        out.flush()
        err.flush()
        with open(out.name) as f_out, open(err.name) as f_err:
            return f_out.read(), f_err.read()

    def wait_for_output(
        self, text: str, *, timeout: float, process_ids=None, stream: str = "stdout"
    ) -> None:
        """Waits until every given process (default all) has printed ``text`` to ``stream``
        ("stdout" or "stderr", where absl logs go).

        Raises JobError (and kills the job) when a process exits first or time runs out.
        """
        ids = range(self.num_processes) if process_ids is None else process_ids
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(text in self.output(i)[stream == "stderr"] for i in ids):
                return
            if any(self.processes[i].poll() is not None for i in ids):
                break
            time.sleep(0.05)
        self.kill()
        raise JobError(f"no {text!r} from processes {list(ids)}:\n{_describe(self.results())}")

    def results(self) -> list[Result]:
        """The processes' exit statuses (None while running) and output so far."""
        return [Result(i, p.poll(), *self.output(i)) for i, p in enumerate(self.processes)]

    def wait(self, timeout: float, *, check: bool = True) -> list[Result]:
        """Waits for every process; returns their results.

        Kills the whole job when ``timeout`` seconds pass, or (``check``) as soon as one process
        exits with a non-zero status, and then raises JobError quoting every process's output.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [p.poll() for p in self.processes]
            if check and any(code not in (None, 0) for code in codes):
                time.sleep(0.5)  # let the others report their side of the failure
                self.kill()
                raise JobError(f"a process failed:\n{_describe(self.results())}")
            if all(code is not None for code in codes):
                return self.results()
            time.sleep(0.05)
        self.kill()
        raise JobError(f"job still running after {timeout:.0f} s:\n{_describe(self.results())}")

    def kill(self) -> None:
        """SIGKILLs every process group still running, reaps them, closes the output files."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def close(self) -> None:
        """Kills what runs and deletes the output files."""
        self.kill()
        for out, err in self._files:
            out.close()
            err.close()
        self._dir.cleanup()


def run(args, *, num_processes: int, timeout: float, **kwargs) -> list[Result]:
    """Runs a job to completion (Job's arguments); raises JobError on failure or timeout."""
    job = Job(args, num_processes=num_processes, **kwargs)
    try:
        return job.wait(timeout)
    finally:
        job.close()
