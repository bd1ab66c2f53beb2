"""python -m blend.evaluate make-benchmark (blend/evaluate/benchmark.py): deterministic, valid masks, no overwrite."""
import json
import random

import numpy as np
import pytest
from PIL import Image

from blend.evaluate import BenchmarkError, imagenet_class_names, make_benchmark
from blend.evaluate.__main__ import main
from blend.evaluate.benchmark import COVERAGE, MIN_LATENT_PIXELS, latent_pixels, random_mask


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (width, height) in {"a.png": (64, 48), "b.jpg": (100, 100), "c.png": (80, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_make_benchmark_is_deterministic_in_the_seed(photos, tmp_path):
    outputs = {}
    for run, seed in (("first", 0), ("again", 0), ("other", 1)):
        (tmp_path / run).mkdir()
        out = tmp_path / run / "bench.jsonl"
        make_benchmark(photos, n=6, seed=seed, out=out)
        masks = {p.name: p.read_bytes() for p in sorted((tmp_path / run / "bench_masks").iterdir())}
        outputs[run] = (out.read_bytes(), masks)
    assert outputs["first"] == outputs["again"]
    assert outputs["first"][0] != outputs["other"][0]


def test_make_benchmark_masks_cover_10_to_40_percent_and_reach_the_latent_grid(photos, tmp_path):
    out = tmp_path / "bench.jsonl"
    entries = make_benchmark(photos, n=12, seed=3, out=out)
    assert read_lines(out) == entries and len(entries) == 12
    names = set(imagenet_class_names())
    shapes = set()
    for entry in entries:
        assert set(entry) == {"id", "image", "mask", "prompt"} and entry["prompt"] in names
        image = Image.open(tmp_path / entry["image"])
        mask = np.asarray(Image.open(tmp_path / entry["mask"])) > 127
        assert mask.shape == (image.height, image.width)
        assert COVERAGE[0] <= mask.mean() <= COVERAGE[1]
        assert latent_pixels(mask) >= MIN_LATENT_PIXELS
        shapes.add("rectangle" if mask[mask.any(1)][:, mask.any(0)].all() else "ellipse")
    assert shapes == {"rectangle", "ellipse"}
    assert len({e["image"] for e in entries}) == 3               # 12 > 3 photos: drawn with replacement
    assert len({e["id"] for e in entries}) == 12


def test_random_mask_shapes_are_ellipses_and_rectangles_of_the_drawn_area():
    rng = random.Random(5)
    for _ in range(40):
        image, shape = random_mask(160, 120, rng)
        mask = np.asarray(image) > 127
        assert COVERAGE[0] <= mask.mean() <= COVERAGE[1]
        box = mask[mask.any(1)][:, mask.any(0)]
        assert box.all() == (shape == "rectangle")


def test_make_benchmark_manifest_is_read_by_blend_batch(photos, tmp_path):
    manifest = pytest.importorskip("blend.manifest")
    out = tmp_path / "bench.jsonl"
    make_benchmark(photos, n=4, seed=0, out=out, class_names=["cat", "coffee"])
    items = manifest.read_manifest(out, {}, model="toy")
    assert [item.prompt for item in items] == [e["prompt"] for e in read_lines(out)]
    assert all(item.image.is_file() and item.mask.is_file() for item in items)


def test_make_benchmark_never_overwrites_and_refuses_bad_inputs_with_exit_2(photos, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["make-benchmark", str(photos), "--n", "2", "--out", str(out), "--classes", "toy"]) == 0
    before = out.read_bytes()
    assert {e["prompt"] for e in read_lines(out)} <= {"astronaut", "brick", "cat", "coffee", "grass", "rocket"}
    assert main(["make-benchmark", str(photos), "--n", "2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["make-benchmark", str(empty), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "holds no photographs" in capsys.readouterr().err
    assert main(["make-benchmark", str(photos), "--n", "0", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "y.jsonl").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    with pytest.raises(BenchmarkError):
        make_benchmark(photos, n=1, out=tmp_path / "missing" / "z.jsonl")


def test_make_benchmark_refuses_an_unreadable_photo_naming_it_with_exit_2_and_writes_nothing(photos, tmp_path, capsys):
    good = (photos / "b.jpg").read_bytes()
    (photos / "b.jpg").write_bytes(good[:len(good) // 2])                     # a truncated JPEG
    out = tmp_path / "bench.jsonl"
    assert main(["make-benchmark", str(photos), "--n", "3", "--out", str(out), "--classes", "toy"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and str(photos / "b.jpg") in error
    assert "replace or remove b.jpg" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize("classes", ["", ",, ,", "EMPTY_FILE", "BLANK_FILE"])
def test_an_empty_class_list_is_refused_with_exit_2_not_replaced_by_imagenet(photos, tmp_path, capsys, classes):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    classes = {"EMPTY_FILE": str(tmp_path / "empty.txt"), "BLANK_FILE": str(tmp_path / "blank.txt")}.get(classes,
                                                                                                          classes)
    out = tmp_path / "bench.jsonl"
    assert main(["make-benchmark", str(photos), "--n", "2", "--out", str(out), "--classes", classes]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --classes") and ("found no class name" in error or "holds no class name" in error)
    assert not out.exists()


def test_a_classes_file_with_a_bom_and_crlf_is_read_and_one_not_in_utf8_is_named(photos, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_bytes("\ufeffcat\r\ngoldfish\r\n".encode("utf-8"))              # as Notepad saves it
    out = tmp_path / "bench.jsonl"
    assert main(["make-benchmark", str(photos), "--n", "6", "--out", str(out), "--classes", str(classes)]) == 0
    assert {entry["prompt"] for entry in read_lines(out)} == {"cat", "goldfish"}
    classes.write_bytes("caf\u00e9\n".encode("latin-1"))
    assert main(["make-benchmark", str(photos), "--out", str(tmp_path / "b2.jsonl"), "--classes", str(classes)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"the classes file {classes} is not UTF-8 text (byte 0xe9 on line 1)" in error


def test_classes_naming_a_folder_or_a_missing_file_is_refused_not_taken_as_a_class_name(photos, tmp_path, capsys):
    for classes, expected in ((str(tmp_path), "found a folder"), (str(tmp_path / "classes.txt"), "no such file")):
        assert main(["make-benchmark", str(photos), "--out", str(tmp_path / "b.jsonl"), "--classes", classes]) == 2
        assert f"error: --classes {classes}: {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("out, blocker", [("f/bench.jsonl", "f"), ("f/sub/bench.jsonl", "f")])
def test_make_benchmark_out_under_a_file_names_that_file(photos, tmp_path, capsys, out, blocker):
    (tmp_path / "f").write_text("a file")
    assert main(["make-benchmark", str(photos), "--out", str(tmp_path / out), "--classes", "toy"]) == 2
    assert f"error: --out {tmp_path / out}: {tmp_path / blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(["make-benchmark", str(photos), "--out", str(photos), "--classes", "toy"]) == 2
    assert f"--out {photos} is a folder" in capsys.readouterr().err


def test_make_benchmark_finishes_a_run_killed_between_its_renames_and_removes_a_killed_runs_hidden_files(
        photos, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    (tmp_path / "bench_masks").mkdir()                                     # masks renamed, manifest not yet
    (tmp_path / ".bench.jsonl.incomplete").write_text('{"id": "0000-cat"}\n')
    assert main(["make-benchmark", str(photos), "--n", "2", "--out", str(out), "--classes", "toy"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == '{"id": "0000-cat"}\n'
    (tmp_path / ".other_masks.incomplete").mkdir()                        # killed while drawing masks
    (tmp_path / ".other.jsonl.incomplete").write_text('{"id": ')
    assert main(["make-benchmark", str(photos), "--n", "2", "--out", str(tmp_path / "other.jsonl"),
                 "--classes", "toy"]) == 0
    assert len(read_lines(tmp_path / "other.jsonl")) == 2
    assert not any(p.name.endswith(".incomplete") for p in tmp_path.iterdir())
