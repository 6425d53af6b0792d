"""The training scripts' `--output_dir`: the flags a run was started with,
the refusal of restarts that would change them, and JSON files written
atomically and read with errors that say the way out."""

import json
import os
import shutil

RUN_FLAGS = "run_flags.json"
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


def start_over(output_dir):
    """Removes what a run wrote into `output_dir` (and nothing else)."""
    for name in OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def check_restart(output_dir, task_name, defining, other, overwrite):
    """Records the run's flags in `output_dir`, or checks a restart's.

    At the first start, writes `run_flags.json`: the task, the flags that
    define the run (`defining`) and the others (`other`, for the record and
    for `export.py`). A restart must have the same task and defining flags.
    With `overwrite`, what an earlier run wrote is removed first.

    Returns:
        Whether the run in `output_dir` already finished (`results.json`
        written): there is nothing left to train.

    Raises:
        ValueError: a restart with other defining flags (each listed with
            its recorded and its new value), or a folder holding a run's
            files without `run_flags.json`.
    """
    os.makedirs(output_dir, exist_ok=True)
    if overwrite:
        start_over(output_dir)
    path = os.path.join(output_dir, RUN_FLAGS)
    way_out = (
        "pass --overwrite to start over in this folder, or choose another "
        "--output_dir."
    )
    record = {"task": task_name, "flags": defining}
    if os.path.exists(path):
        recorded = read_json(path, way_out)
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
                + way_out
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
            f"flags were not recorded ({RUN_FLAGS} is missing); " + way_out
        )
    write_json(path, {**record, "other_flags": other})
    return False
