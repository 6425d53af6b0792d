"""Builds keras_sgs as a user gets it, installs it alone and exercises it.

```sh
python3 release/check.py        # `make release-check`; `make test` runs it
```

1. `python -m build`: the sdist, then the wheel built from the sdist (so a
   file missing from the sdist fails the wheel too).
2. The wheel holds every module of `keras_sgs/` and nothing else;
   `twine check --strict` passes on both files (metadata, README).
3. A fresh virtual environment gets the wheel with the `jax` and
   `tfrecords` extras and nothing more (keras and jax at the `dev`
   extra's pins, so that the machines' package cache serves them).
4. `release/smoke.py` runs there, from an empty folder outside the
   repository (the installed package, not this checkout), on a copy of
   the shipped CIFAR-10 test sample.

Everything is written to a temporary folder, removed at the end; the
build leaves `keras_sgs.egg-info/` (ignored by git) in the checkout.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKEND = "jax"
EXTRAS = f"{BACKEND},tfrecords"
SAMPLE = REPO / "data" / "cifar10_sample" / "test.tfrecord"


def run(args, **kwargs):
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)


def dev_pins(names):
    """`name==version` of the `dev` extra for each of `names`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for requirement in project["optional-dependencies"]["dev"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", requirement)
        if match and match[1] in names:
            pins[match[1]] = requirement
    missing = set(names) - set(pins)
    if missing:
        raise SystemExit(f"the dev extra pins none of {sorted(missing)}")
    return [pins[name] for name in names]


def check_wheel_files(wheel):
    """The wheel's Python files are exactly `keras_sgs/*.py` of the repo."""
    expected = {
        f"keras_sgs/{p.name}" for p in (REPO / "keras_sgs").glob("*.py")
    }
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    found = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    if found != expected:
        raise SystemExit(
            f"{wheel.name}: missing {sorted(expected - found)}, "
            f"unexpected {sorted(found - expected)}"
        )
    print(f"{wheel.name}: {len(found)} modules, nothing else")


def main():
    timings = {}
    with tempfile.TemporaryDirectory(prefix="keras_sgs_release_") as tmp:
        tmp = pathlib.Path(tmp)
        dist = tmp / "dist"

        start = time.perf_counter()
        run([sys.executable, "-m", "build", "-q", "--outdir", dist, REPO])
        (wheel,) = dist.glob("*.whl")
        check_wheel_files(wheel)
        twine_check = [sys.executable, "-m", "twine", "check", "--strict"]
        run(twine_check + sorted(dist.iterdir()))
        timings["build and check"] = time.perf_counter() - start

        start = time.perf_counter()
        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", venv])
        python = venv / "bin" / "python"
        constraints = tmp / "constraints.txt"
        constraints.write_text("\n".join(dev_pins(["keras", BACKEND])))
        # Without PYTHONPATH: one naming this checkout (and the egg-info
        # that `build` leaves in it) makes pip take keras_sgs as installed
        # and skip the wheel.
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        run(
            [sys.executable, "-m", "pip", "--python", python, "install"]
            + ["-q", "-c", constraints, f"{wheel}[{EXTRAS}]"],
            env=environ,
        )
        timings["fresh venv and install"] = time.perf_counter() - start

        start = time.perf_counter()
        workdir = tmp / "run"
        workdir.mkdir()
        shutil.copy(REPO / "release" / "smoke.py", workdir)
        shutil.copy(SAMPLE, workdir)
        run(
            [python, "-I", "smoke.py", SAMPLE.name],
            cwd=workdir,
            env={**environ, "KERAS_BACKEND": BACKEND},
        )
        timings["smoke test"] = time.perf_counter() - start

    print(
        "release check passed: "
        + ", ".join(f"{step} {s:.0f} s" for step, s in timings.items())
    )


if __name__ == "__main__":
    main()
