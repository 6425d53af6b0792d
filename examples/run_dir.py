"""The training scripts' `--output_dir`: one live run at a time, the flags
a run was started with, the refusal of restarts that would change them,
and JSON files written atomically and read with errors that say the way
out."""

import contextlib
import fcntl
import json
import os
import shutil

RUN_FLAGS = "run_flags.json"
# Held (`fcntl.flock`) by the live run; the lock goes with its process.
LOCK = "run.lock"
# What a run writes into --output_dir (removed by --overwrite). The other
# workers of a multi-worker run have their own folders in `workers/`, each
# checked by its worker.
OUTPUTS = (
    RUN_FLAGS,
    "backup",
    "history.json",
    "model.keras",
    "fused.keras",
    "masks.png",
    "results.json",
    "tensorboard",
    "export",
)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically: a kill leaves either
    the old file or the new one, never half of one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_json(path, way_out):
    """The JSON in `path`; a `ValueError` naming the file and `way_out`
    when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); {way_out}") from None


@contextlib.contextmanager
def locked(output_dir):
    """Holds `output_dir` for one run while the block runs.

    Creates `output_dir` and takes an exclusive `fcntl.flock` on its
    `run.lock`, which records the process id. The operating system
    releases the lock when the process ends, however it ends: a killed run
    leaves no lock behind, and nothing needs cleaning up.

    Raises:
        RuntimeError: another live run (another process, or another block
            of this one) holds `output_dir`; the message names it.
    """
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, LOCK), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RuntimeError(
                f"{output_dir} is in use by a live run ({holder}); wait for "
                "it to end, or choose another --output_dir."
            ) from None
        lock.truncate(0)
        lock.write(f"process {os.getpid()}")
        lock.flush()
        yield


WAY_OUT = (
    "pass --overwrite to start over in this folder, or choose another "
    "--output_dir."
)


def start_over(output_dir):
    """Removes what a run wrote into `output_dir` (and nothing else)."""
    for name in OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def check_restart(output_dir, task_name, defining, overwrite):
    """Checks that the run may start in `output_dir`; writes nothing.

    A folder holding a run (`run_flags.json`) takes only a restart of that
    run: the same task and defining flags (`defining`). With `overwrite`,
    whatever is there will be removed (by `record_start`).

    Returns:
        Whether the run in `output_dir` already finished (`results.json`
        written): there is nothing left to train.

    Raises:
        ValueError: a restart with other defining flags (each listed with
            its recorded and its new value), or a folder holding a run's
            files without `run_flags.json`.
    """
    if overwrite:
        return False
    path = os.path.join(output_dir, RUN_FLAGS)
    if os.path.exists(path):
        recorded = read_json(path, WAY_OUT)
        old = {"task": recorded.get("task"), **recorded.get("flags", {})}
        new = {"task": task_name, **defining}
        changed = [
            f"  {'' if name == 'task' else '--'}{name}: {old.get(name)!r} "
            f"-> {new.get(name)!r}"
            for name in sorted(set(old) | set(new))
            if old.get(name) != new.get(name)
        ]
        if changed:
            raise ValueError(
                f"{output_dir} holds a run started with other flags; a "
                "restart must use the same ones (recorded -> given):\n"
                + "\n".join(changed)
                + "\nTo resume it, start it with the recorded values; or "
                + WAY_OUT
            )
        return os.path.exists(os.path.join(output_dir, "results.json"))
    leftovers = [
        name
        for name in OUTPUTS
        if os.path.exists(os.path.join(output_dir, name))
    ]
    if leftovers:
        raise ValueError(
            f"{output_dir} holds {', '.join(leftovers)} from a run whose "
            f"flags were not recorded ({RUN_FLAGS} is missing); " + WAY_OUT
        )
    return False


def record_start(output_dir, task_name, defining, other, overwrite):
    """Records the run in `output_dir`, once it has passed every check.

    With `overwrite`, first removes what an earlier run wrote. At the
    first start, writes `run_flags.json`: the task, the flags that define
    the run (`defining`) and the others (`other`, for the record and for
    `export.py`); a restart (checked by `check_restart`) keeps the file.
    A start refused before this (bad data or flags) leaves the folder as
    it was, so the corrected command is no restart.
    """
    if overwrite:
        start_over(output_dir)
    path = os.path.join(output_dir, RUN_FLAGS)
    if not os.path.exists(path):
        write_json(
            path, {"task": task_name, "flags": defining, "other_flags": other}
        )
