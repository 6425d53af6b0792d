"""Builds the API reference from the docstrings, failing on any warning.

```sh
python3 docs/build_api.py        # `make docs`: writes build/api/index.html
```

pdoc (Google-style docstrings, as Keras writes them) renders `keras_sgs`
and each public module. The build fails, naming what is wrong, when pdoc
warns (a module that does not import, an annotation or docstring it
cannot read), when a public module, class or function has no docstring,
or when an object exported by `keras_sgs` has no `Example:`.
"""

import argparse
import inspect
import os
import pathlib
import pkgutil
import sys
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402, F401  (the backend's own import-time warnings)
import pdoc  # noqa: E402
import pdoc.doc  # noqa: E402
import pdoc.render  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def module_names(package):
    """`keras_sgs` and its public modules. pdoc documents the modules in
    `keras_sgs.__all__` under `keras_sgs` itself; the others are named."""
    submodules = [
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in package.__all__
    ]
    return [package.__name__] + [f"{package.__name__}.{m}" for m in submodules]


def overrides_outside(name, cls, package_name):
    """Whether `cls.<name>` overrides a method of a base class from another
    package (e.g. Keras's `build` or `call`), documented there."""
    return any(
        name in vars(base) and not base.__module__.startswith(package_name)
        for base in inspect.getmro(cls)[1:]
    )


def undocumented(module, package_name):
    """Names of public modules, classes, functions and methods, defined in
    the package, that have no docstring."""
    missing = [] if module.docstring.strip() else [module.fullname]
    pending = [(member, None) for member in module.members.values()]
    while pending:
        member, owner = pending.pop()
        if member.name.startswith("_") or isinstance(member, pdoc.doc.Variable):
            continue
        if not member.taken_from[0].startswith(package_name):
            continue  # re-exported from elsewhere (e.g. Keras)
        if isinstance(member, pdoc.doc.Class):
            pending += [(m, member.obj) for m in member.own_members]
        if member.docstring.strip() or (
            owner is not None
            and overrides_outside(member.name, owner, package_name)
        ):
            continue
        missing.append(member.fullname)
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "build" / "api"))
    output = pathlib.Path(parser.parse_args().output)
    sys.path.insert(0, str(REPO))

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import keras_sgs

        names = module_names(keras_sgs)
        modules = [pdoc.doc.Module.from_name(name) for name in names]
        for module in modules:
            problems += [
                f"no docstring: {name}"
                for name in undocumented(module, keras_sgs.__name__)
            ]
        for name in keras_sgs.__all__:
            obj = getattr(keras_sgs, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if "Example:" not in (inspect.getdoc(obj) or ""):
                    problems.append(f"no `Example:` in keras_sgs.{name}")

        pdoc.render.configure(
            docformat="google",
            footer_text=f"keras_sgs {keras_sgs.__version__}",
        )
        if output.exists():
            for old in output.rglob("*.html"):
                old.unlink()
        pdoc.pdoc(*names, output_directory=output)
    problems += [
        f"warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
    ]

    if problems:
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(f"API reference: {len(problems)} problem(s)")
    print(f"API reference of {', '.join(names)} -> {output / 'index.html'}")


if __name__ == "__main__":
    main()
