"""The import graph of the runtime packages, as the README draws it:

    blend → weights → {ldm, adm, clip, samplers, fast}   (blend also uses samplers and clip directly)
                       adm → ldm                     (ADM and the LDM UNet share the timestep embedding and resampling)
                       fast → ldm                    (the fast path swaps layers of the plain networks)

ldm, clip and samplers import none of the project's packages; fast and adm import only ldm; weights only
those five; nothing imports blend. Every import statement in the packages is read, at any depth (also the
lazy ones inside functions), so a new import that breaks the graph fails here.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "ldm": set(),
    "adm": {"ldm"},
    "clip": set(),
    "samplers": set(),
    "fast": {"ldm"},
    "weights": {"ldm", "adm", "clip", "samplers", "fast"},
    "blend": {"weights", "samplers", "clip"},
}
REFERENCE_IMPLEMENTATIONS = {"diffusers", "transformers", "open_clip", "x_transformers", "lpips", "torchvision"}


def imported_top_level_names(path: Path) -> set:
    """The top-level module of every absolute import in a file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imports_of(package: str) -> dict:
    """{file: the project's packages it imports, other than its own}."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = imported_top_level_names(path) & set(ALLOWED) - {package}
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def test_import_graph_points_one_way():
    offenders = {file: sorted(names - ALLOWED[package])
                 for package in ALLOWED for file, names in imports_of(package).items() if names - ALLOWED[package]}
    assert offenders == {}, f"imports that break blend → weights → {{ldm, clip, samplers}}: {offenders}"


def test_the_graph_has_no_cycle():
    def reaches(start, goal, seen=()):
        return any(step == goal or (step not in seen and reaches(step, goal, (*seen, step))) for step in ALLOWED[start])
    assert not any(reaches(package, package) for package in ALLOWED)


def test_the_runtime_packages_import_no_reference_implementation():
    offenders = {str(path.relative_to(ROOT)): sorted(imported_top_level_names(path) & REFERENCE_IMPLEMENTATIONS)
                 for package in ALLOWED for path in (ROOT / package).rglob("*.py")
                 if imported_top_level_names(path) & REFERENCE_IMPLEMENTATIONS}
    assert offenders == {}


def test_the_graph_check_sees_a_lazy_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from blend.editor import edit\n    import weights.load\n", encoding="utf-8")
    assert imported_top_level_names(sample) == {"blend", "weights"}
