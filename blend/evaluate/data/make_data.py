"""Makes the two vendored data files of blend/evaluate/data from the packages that publish them.

    python blend/evaluate/data/make_data.py            write them (refuses to overwrite; --force replaces)
    python blend/evaluate/data/make_data.py --check    remake them in memory and compare (tensors and metadata)

* lpips_vgg_v0.1.safetensors: the five linear heads of LPIPS v0.1 for the VGG backbone, read from
  `lpips/weights/v0.1/vgg.pth` of the lpips package (0.1.4, BSD-2; notice in LICENSE.lpips) with
  torch.load(weights_only=True), stored unchanged (float32) under the same names.
* imagenet_classes.txt: the 1000 ImageNet class names, one a line in class-index order, as OpenAI
  cleaned them for CLIP's zero-shot classifier, read from `IMAGENET_CLASSNAMES` of open_clip's
  `zero_shot_metadata.py` (open_clip_torch 3.3.0, MIT).

Both packages come with `make setup-test` (installed with --no-deps); the source files are read by path,
so neither package needs to be importable (lpips imports torchvision, open_clip too).
"""
import argparse
import ast
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load, save

DATA = Path(__file__).resolve().parent
HEADS = DATA / "lpips_vgg_v0.1.safetensors"
CLASSES = DATA / "imagenet_classes.txt"


def package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"the {name} package is not installed; `make setup-test` installs it")
    return Path(spec.submodule_search_locations[0])


def heads_bytes() -> bytes:
    source = package_folder("lpips") / "weights" / "v0.1" / "vgg.pth"
    tensors = torch.load(source, map_location="cpu", weights_only=True)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    metadata = {"source": "lpips 0.1.4, lpips/weights/v0.1/vgg.pth (BSD-2-Clause, see LICENSE.lpips)",
                "source_sha256": digest}
    return save({key: tensors[key].contiguous() for key in sorted(tensors)}, metadata=metadata)


def classes_bytes() -> bytes:
    source = package_folder("open_clip") / "zero_shot_metadata.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", None) == "IMAGENET_CLASSNAMES")
    assert len(names) == 1000, len(names)
    return ("\n".join(names) + "\n").encode("utf-8")


def same(path: Path, content: bytes) -> bool:
    """Whether the file holds `content`: the same tensors and metadata for safetensors (whose header
    lists the metadata in no fixed order), the same bytes otherwise."""
    if path.suffix != ".safetensors":
        return path.read_bytes() == content
    stored, made = safetensors_parts(path.read_bytes()), safetensors_parts(content)
    return stored[1] == made[1] and stored[0].keys() == made[0].keys() and all(
        torch.equal(stored[0][key], made[0][key]) for key in made[0])


def safetensors_parts(content: bytes) -> tuple[dict, dict]:
    header = json.loads(content[8:8 + int.from_bytes(content[:8], "little")])
    return load(content), header.get("__metadata__", {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the stored files; write nothing")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    made = {HEADS: heads_bytes(), CLASSES: classes_bytes()}
    if args.check:
        stale = [str(path) for path, content in made.items() if not path.is_file() or not same(path, content)]
        if stale:
            print("differ from their sources: " + ", ".join(stale))
            return 1
        print("blend/evaluate/data matches its sources")
        return 0
    for path, content in made.items():
        if path.exists() and not args.force:
            sys.exit(f"{path} exists; pass --force to replace it")
        path.write_bytes(content)
        print(f"wrote {path} ({len(content)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
