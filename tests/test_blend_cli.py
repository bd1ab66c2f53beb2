"""blend/cli.py: `python -m blend` end to end on the toy and tiny models, into temporary folders."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK, main

REPOSITORY = Path(__file__).resolve().parent.parent


def example_arrays(size=None):
    """The example photograph and its mask (True = edit) as arrays, optionally resized (LANCZOS / NEAREST)."""
    image, mask = Image.open(EXAMPLE_IMAGE).convert("RGB"), Image.open(EXAMPLE_MASK).convert("L")
    if size:
        image, mask = image.resize(size, Image.LANCZOS), mask.resize(size, Image.NEAREST)
    return np.asarray(image, dtype=np.float32), np.asarray(mask) >= 128


def results_of(folder: Path, count: int) -> list:
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"result_{i}.png" for i in range(count)] + ["grid.png"])
    return [Image.open(folder / f"result_{i}.png") for i in range(count)]


def test_cli_toy_edits_the_example_offline(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["--model", "toy", "--samples", "2", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    results = results_of(out, 2)
    source, mask = example_arrays()
    assert all(r.size == (400, 400) for r in results)
    assert Image.open(out / "grid.png").size == (4 * 400, 400)  # input | mask | 2 results
    # The toy works at 128x128: outside the mask, a result is the source resized down and back up.
    down_up = np.asarray(Image.fromarray(source.astype(np.uint8)).resize((128, 128), Image.LANCZOS)
                         .resize((400, 400), Image.LANCZOS), dtype=np.float32)
    far = ~dilated(mask, 12)
    for result in results:
        array = np.asarray(result, dtype=np.float32)
        assert np.abs(array - down_up)[far].max() <= 1          # exact up to rounding
        assert np.abs(array - source)[mask].mean() > 40          # the cup was replaced


def dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    """mask grown by `radius` pixels (a square), to stay clear of the resize filters' reach."""
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None],
                                           2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0].numpy() > 0


def test_cli_tiny_runs_the_whole_path_and_background_stays_near_reconstruction(tmp_path, capsys):
    # Random weights: D(E(x)) is itself far from x, and GroupNorm and attention carry the edited
    # region's statistics into the background. So the bound is relative: a result's background is as
    # close to the source as the tiny VAE's own reconstruction of it, within 25%.
    out = tmp_path / "tiny"
    assert main(["--model", "tiny", "--out", str(out)]) == 0
    assert "NOISE BY DESIGN" in capsys.readouterr().err
    results = results_of(out, 4)
    source, mask = example_arrays()
    tiny = weights.load("tiny")
    x = torch.from_numpy(example_arrays((64, 64))[0] / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        reconstruction = tiny.vae.decode(tiny.vae.encode(x).mean)[0]
    reconstruction = ((reconstruction.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    reconstruction = np.asarray(Image.fromarray(reconstruction).resize((400, 400), Image.LANCZOS), dtype=np.float32)
    reconstruction_error = np.abs(reconstruction - source)[~mask].mean()
    for result in results:
        assert result.size == (400, 400)
        assert np.abs(np.asarray(result, dtype=np.float32) - source)[~mask].mean() < 1.25 * reconstruction_error


def test_cli_tiny_pixel_reconstruction_preserves_background_pixels(tmp_path):
    out = tmp_path / "pixel"
    assert main(["--model", "tiny", "--samples", "1", "--steps", "8", "--reconstruction", "pixel",
                 "--out", str(out)]) == 0
    source, mask = example_arrays()
    result = np.asarray(results_of(out, 1)[0], dtype=np.float32)
    assert np.array_equal(result[~mask], source[~mask])


def test_cli_existing_output_folder_gets_a_new_name(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--model", "tiny", "--samples", "1", "--steps", "4", "--out", str(out)]) == 0
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert f"{out}-1" in capsys.readouterr().out
    results_of(tmp_path / "run-1", 1)


def test_cli_never_writes_into_the_input_folder(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = inputs / "photo.png"
    Image.open(EXAMPLE_IMAGE).save(image)
    before = image.read_bytes()
    assert main(["--model", "tiny", "--samples", "1", "--steps", "4", "--image", str(image),
                 "--out", str(inputs)]) == 0
    assert image.read_bytes() == before and sorted(p.name for p in inputs.iterdir()) == ["photo.png"]
    results_of(tmp_path / "inputs-1", 1)


@pytest.mark.parametrize("arguments, message", [
    (["--image", "missing.jpg"], "image file not found: missing.jpg"),
    (["--mask", "missing.png"], "mask file not found: missing.png"),
    (["--mask", "__EMPTY__"], "nothing to edit"),
    (["--model", "toy", "--prompt", "a dog"], "knows only the classes"),
])
def test_cli_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, arguments, message):
    if "__EMPTY__" in arguments:
        empty = tmp_path / "empty.png"
        Image.new("L", (400, 400), 0).save(empty)
        arguments = [str(empty) if a == "__EMPTY__" else a for a in arguments]
    out = tmp_path / "out"
    assert main([*arguments, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_without_weights_exits_nonzero_with_one_paragraph(tmp_path):
    # `python -m blend` with no arguments uses SD 2.1-base; with the Hub offline and an empty cache it must
    # fail fast with one paragraph: what failed, how to get the files, a local checkpoint, --model toy.
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
                       PYTHONPATH=str(REPOSITORY))
    completed = subprocess.run([sys.executable, "-m", "blend"], cwd=tmp_path, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1, completed.stderr
    message = completed.stderr.strip()
    assert message.startswith("error: could not load the model 'sd-2.1-base'") and message.count("\n") == 0
    for needed in ("stabilityai/stable-diffusion-2-1-base", "hf download", "--model PATH", "--model toy"):
        assert needed in message
    assert not (tmp_path / "outputs").exists()


def test_cli_rank_saves_results_best_first_with_ascending_clip_distances(tmp_path, capsys):
    """--rank (paper §4.4): result_k is the unranked sample listed k-th in ranking.txt, and distances ascend."""
    common = ["--model", "tiny", "--samples", "3", "--steps", "4", "--size", "64"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--rank", "tiny", "--out", str(tmp_path / "ranked")]) == 0
    lines = (tmp_path / "ranked" / "ranking.txt").read_text().splitlines()[1:]
    samples = [int(line.split()[2]) for line in lines]
    distances = [float(line.split()[4]) for line in lines]
    assert sorted(samples) == [0, 1, 2] and distances == sorted(distances)
    plain = [np.asarray(Image.open(tmp_path / "plain" / f"result_{i}.png")) for i in range(3)]
    for k, sample in enumerate(samples):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ranked" / f"result_{k}.png")), plain[sample])
    grid_ranked = np.asarray(Image.open(tmp_path / "ranked" / "grid.png"))
    grid_plain = np.asarray(Image.open(tmp_path / "plain" / "grid.png"))
    width = grid_plain.shape[1] // 5                         # input | mask | 3 results
    def tile(grid, index):
        return grid[:, (2 + index) * width:(3 + index) * width]
    for k, sample in enumerate(samples):
        assert np.array_equal(tile(grid_ranked, k), tile(grid_plain, sample))
