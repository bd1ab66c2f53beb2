"""The repository's promises: the declared packages and dependencies, and CI runs the README's test command."""
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ldm", "adm", "samplers", "blend", "clip", "weights", "fast")
ALLOWED = {"torch", "einops", "safetensors", "huggingface_hub", "pillow", "numpy", "ftfy", "regex"}


def test_setup_cfg_declares_every_package_folder_and_only_the_allowed_runtime_dependencies():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in config["options"]["packages"].split(",")}
    folders = {".".join(init.parent.relative_to(ROOT).parts)
               for top in PACKAGES for init in (ROOT / top).rglob("__init__.py")}
    assert packages == folders and {p.split(".")[0] for p in packages} == set(PACKAGES)
    requirements = {re.split(r"[<>=!~ \[]", line.strip())[0]
                    for line in config["options"]["install_requires"].splitlines() if line.strip()}
    assert requirements == ALLOWED


def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT / "README.md").read_text(encoding="utf-8"), (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme and re.search(r"^make test$", ci, re.M)
    assert "make demo" in readme
