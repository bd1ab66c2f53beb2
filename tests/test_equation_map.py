"""The README's equation map names real functions and real tests (so it cannot go stale).

The table is read from README.md under the heading "## Equation map". In the "Computed by" and "Checked by"
columns, a backticked `path.py` is followed by backticked names defined in that file: functions, classes or
`Class.method`.
Functions are checked by importing their module; tests by parsing their file (nothing runs).
"""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Equation map"

# What the map must cover: each is a phrase that some row's "Equation" cell contains.
REQUIRED_EQUATIONS = [
    "Algorithm 1, line 1", "Algorithm 1, line 2", "Algorithm 1, line 3", "Algorithm 1, line 4",
    "Algorithm 1, line 5", "Algorithm 1, line 6", "Algorithm 1, line 7", "Algorithm 1, line 9",
    "DDIM eq. 12", "Classifier-free guidance", "q(z_t", "ε → x̂0", "x̂0 → ε", "v:",
    "mask shrinking", "reconstruction loss",
]


def map_source() -> tuple[Path, str]:
    """(README.md, its text), which must have the equation-map heading."""
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(HEADING)}\s*$", text, flags=re.MULTILINE), f"README.md has no '{HEADING}' section"
    return readme, text


def split_row(line: str) -> list[str]:
    """The cells of a markdown table row; `\\|` inside a cell is a literal bar."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def read_table() -> tuple[Path, list[dict]]:
    """The rows of the first table after the heading, as {column header: cell}."""
    path, text = map_source()
    section = text.split(HEADING, 1)[1] if HEADING in text else text
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]   # up to the next heading
    lines = [line for line in section.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        pytest.fail(f"{path}: expected a markdown table under '{HEADING}', found {len(lines)} table lines")
    header = split_row(lines[0])
    return path, [dict(zip(header, split_row(line), strict=False)) for line in lines[2:]]


def references(cell: str) -> list[tuple[str, list[str]]]:
    """[(file, [names in it])] from a cell such as "`a/b.py` `f` `C.m`; `c.py` `g`"."""
    found = []
    for item in re.findall(r"`([^`]+)`", cell):
        if item.endswith(".py"):
            found.append((item, []))
        elif found:
            found[-1][1].append(item)
        else:
            raise AssertionError(f"the name `{item}` comes before any `file.py` in: {cell}")
    return found


PATH, ROWS = read_table()
IDS = [row.get("Equation", "?")[:60] for row in ROWS]


def test_the_map_has_the_expected_columns_and_covers_the_issues_equations():
    assert ROWS, f"{PATH}: the equation map has no rows"
    for column in ("Equation", "Computed by", "Checked by"):
        assert column in ROWS[0], f"{PATH}: the equation map needs a '{column}' column, has {list(ROWS[0])}"
    equations = " ".join(row["Equation"] for row in ROWS)
    missing = [phrase for phrase in REQUIRED_EQUATIONS if phrase not in equations]
    assert not missing, f"{PATH}: no row of the equation map covers {missing}"


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_function_named_in_the_map_exists(row):
    named = references(row["Computed by"])
    assert named and all(names for _, names in named), \
        f"{PATH}: the row '{row['Equation']}' must name a file and at least one function in it"
    for file, names in named:
        assert (ROOT / file).is_file(), f"{PATH}: the row '{row['Equation']}' names {file}, which does not exist"
        module = importlib.import_module(file[:-len(".py")].replace("/", "."))
        for name in names:
            target = module
            for part in name.split("."):
                assert hasattr(target, part), f"{PATH}: {file} has no `{name}` (row '{row['Equation']}')"
                target = getattr(target, part)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_every_test_named_in_the_map_exists(row):
    named = references(row["Checked by"])
    assert named and all(names for _, names in named), \
        f"{PATH}: the row '{row['Equation']}' must name a test file and at least one test in it"
    for file, names in named:
        path = ROOT / file
        assert path.is_file(), f"{PATH}: the row '{row['Equation']}' names {file}, which does not exist"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for name in names:
            assert name.startswith("test_"), f"{PATH}: `{name}` in {file} is not a test function name"
            assert name in defined, f"{PATH}: {file} has no test `{name}` (row '{row['Equation']}')"


def test_every_notebook_linked_from_the_map_exists():
    for row in ROWS:
        for link in re.findall(r"\]\(([^)]+\.ipynb)\)", row.get("Shown in", "")):
            assert (ROOT / link).is_file(), f"{PATH}: the row '{row['Equation']}' links {link}, which does not exist"
