#!/usr/bin/env python
"""Write (or, with --check, re-derive and compare) the golden fixtures in tests/golden/data/.

Each `tests/golden/fixtures_<part>.py` defines FIXTURES = {name: function}; a function
builds the *reference* implementation (diffusers, transformers, open_clip: the
`reference` extra, plus open_clip_torch==3.3.0 with --no-deps), fills it with the
deterministic random weights of `weights.random_init` where it has weights, runs it on
seeded inputs and returns {tensor name: tensor}, inputs included. They are saved as
tests/golden/data/<name>.safetensors with the reference versions in the metadata.
A value that is not a tensor (a key list, a token list: anything JSON can hold) is
stored as JSON in the metadata under "json.<name>"; tests/helpers.py's load_golden
returns both kinds.

    cd tests && python -m golden.make_fixtures               # regenerate all
    cd tests && python -m golden.make_fixtures --only ddim   # names containing "ddim"
    cd tests && python -m golden.make_fixtures --check       # regenerate in memory and compare

It runs from tests/ as a module, so that the fixture scripts import the tests' own helpers (tests/helpers.py,
tests/fakes.py) and golden.precision as the tests do; the packages come from the installed project.

Each fixture function that takes a `dtype` runs twice: in float32 (what is stored) and in float64
with the same float32 noise (tests/golden/precision.py). Every result that the two runs compute
differently gets a "<name>.float32_error" = max|float32 − float64| beside it: the reference's own
rounding error on the machine that made the fixture, which the tests' bounds are derived from.

--check fails when a fixture is missing or has other keys, shapes or dtypes; when an input, or a
result that is exact in float32, differs at all; or when a result with a measured float32 error
differs by more than precision.golden_bound allows: 2·(e_now + e_stored) + u·max|stored|, the two
machines' own measured errors (see precision.py for the derivation). The measured errors themselves
are not compared: they are properties of the machine that measured them.
"""
import argparse
import importlib.util
import inspect
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from golden.precision import ERROR_SUFFIX, add_float32_errors, float32_draws, golden_bound
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

REFERENCES = ("torch", "diffusers", "transformers", "open_clip_torch")


def discover() -> dict:
    fixtures = {}
    for path in sorted(HERE.glob("fixtures_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, function in module.FIXTURES.items():
            if name in fixtures:
                raise SystemExit(f"fixture {name!r} is defined twice ({path.name})")
            fixtures[name] = function
    return fixtures


def versions() -> dict:
    found = {}
    for package in REFERENCES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def run(function) -> dict:
    """The fixture's values, with the float32 errors of its results when it can run in float64."""
    values = function()
    if "dtype" not in inspect.signature(function).parameters:
        return values
    with float32_draws():
        values64 = function(dtype=torch.float64)
    return add_float32_errors(values, values64)


def split(values: dict):
    """({name: tensor}, {"json.<name>": json text}) from a fixture function's result."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in values.items() if isinstance(v, torch.Tensor)}
    documents = {f"json.{k}": json.dumps(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    return tensors, documents


def stored_documents(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if k.startswith("json.")}


def compare(name: str, new: dict, old: dict) -> list:
    problems = []
    if set(new) != set(old):
        problems.append(f"{name}: keys differ: only new {sorted(set(new) - set(old))}, "
                        f"only stored {sorted(set(old) - set(new))}")
    for key in sorted(set(new) & set(old)):
        a, b = new[key], old[key]
        if key.endswith(ERROR_SUFFIX):
            continue                    # a measurement of the machine that made it, not a value to reproduce
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}/{key}: {tuple(a.shape)} {a.dtype} now, {tuple(b.shape)} {b.dtype} stored")
        elif key + ERROR_SUFFIX in new and key + ERROR_SUFFIX in old:
            difference = (a.double() - b.double()).abs().max().item()
            bound = golden_bound(b, old[key + ERROR_SUFFIX].item(), new[key + ERROR_SUFFIX].item())
            if difference > bound:
                problems.append(f"{name}/{key}: differs by {difference:.3g}, more than float32 rounding explains "
                                f"({bound:.3g} = 2·(e_now {new[key + ERROR_SUFFIX].item():.3g} + e_stored "
                                f"{old[key + ERROR_SUFFIX].item():.3g}) + u·max)")
        elif not torch.equal(a, b):
            problems.append(f"{name}/{key}: differs, and it is an input or an exact result "
                            f"(max difference {(a.double() - b.double()).abs().max().item():.3g})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the stored fixtures, write nothing")
    parser.add_argument("--only", default="", help="only fixtures whose name contains this")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    fixtures = {n: f for n, f in discover().items() if args.only in n}
    meta = {f"version.{k}": v for k, v in versions().items()}
    DATA.mkdir(exist_ok=True)
    problems = []
    for name, function in fixtures.items():
        started = time.perf_counter()
        tensors, documents = split(run(function))
        path = DATA / f"{name}.safetensors"
        if args.check:
            if not path.exists():
                problems.append(f"{name}: {path} is missing; run tests/golden/make_fixtures.py")
            else:
                problems += compare(name, tensors, load_file(path))
                old_documents = stored_documents(path)
                problems += [f"{name}/{k[5:]}: JSON value differs" for k in sorted(set(documents) | set(old_documents))
                             if json.loads(documents.get(k, "null")) != json.loads(old_documents.get(k, "null"))]
        else:
            save_file(tensors, path, metadata={"made_by": "tests/golden/make_fixtures.py", **meta, **documents})
        print(f"{'checked' if args.check else 'wrote'} {name} ({len(tensors)} tensors, {len(documents)} JSON, "
              f"{time.perf_counter() - started:.1f} s)", flush=True)
    if args.check:
        for problem in problems:
            print("MISMATCH", problem)
        print(f"golden check: {len(fixtures)} fixtures, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
