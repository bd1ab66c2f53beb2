"""The method choice: `python -m blend --method bld|blended-diffusion|local-clip`, the manifest's "method" of
`python -m blend.batch`, and blend.app's method select; each method's own options, and the refusal of an option
given to a method that does not take it (exit 2, before any model loads, naming the method that takes it)."""
import io
import json
import types

import numpy as np
import pytest
import torch
from helpers import write_manifest
from PIL import Image

import weights
from blend.batch import main as batch_main
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK, main, parse_args
from blend.interfaces import StepRecord
from blend.options import METHOD_OPTIONS, METHODS, either

PIXEL = ("blended-diffusion", "local-clip")
# Each method's own options, given at their default values: given is given, whatever the value.
BLD_ONLY = [["--steps", "50"], ["--guidance", "7.5"], ["--start", "0.25"], ["--variant", "paper"],
            ["--sampler", "ddim"], ["--shrink"], ["--reconstruction", "none"], ["--rank"], ["--size", "256"],
            ["--vae", "fp16-fix"]]
PIXEL_ONLY = [["--skip-timesteps", "25"], ["--respacing", "100"], ["--clip-guidance", "1000"], ["--range-loss", "50"],
              ["--views", "8"], ["--ddim"]]
TINY = ["--respacing", "4", "--skip-timesteps", "2", "--views", "1", "--samples", "1"]   # two steps, one view


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model, CLIP or the pixel editor's model fails the test: refusals come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    for name in ("blend.cli.load_model", "blend.cli.load_clip", "blend.editor.load_model", "blend.batch.load_model",
                 "weights.load_pixel_model", "blend.pixel_editor.edit_pixels"):
        monkeypatch.setattr(name, forbidden)


def refused(tmp_path, capsys, arguments) -> str:
    """main() exits 2 with one line `error: ...`, writing nothing; the line without its prefix."""
    before = sorted(tmp_path.rglob("*"))
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("error: ") and "\n" not in message and not captured.out, captured.err
    assert sorted(tmp_path.rglob("*")) == before
    return message.removeprefix("error: ")


class EditPixelsStub:
    """blend.pixel_editor.edit_pixels, recorded: results ranked best first as the real one ranks, after one
    callback per step with a pixel x̂0 (so the progress line and the app's previews run)."""

    def __init__(self):
        self.calls = []

    def __call__(self, image, mask, prompt, **options):
        self.calls.append(options)
        x0 = torch.zeros(options["num_samples"], 3, 8, 8)
        if options.get("callback"):
            for index in range(2):
                options["callback"](StepRecord(index, 2, 1 - index, -index, x0, x0, x0, x0, x0[:, :1], x0))
        results = []
        for sample in reversed(range(options["num_samples"])):
            result = Image.new("RGB", (8, 8), (40 * sample, 0, 0))
            result.info.update(sample=sample, clip_distance=0.5 + sample)
            results.append(result)
        return results[::-1]


@pytest.fixture
def stub_pixels(monkeypatch):
    """edit_pixels and weights.load_pixel_model replaced: `.calls` (edit_pixels' keywords), `.loaded` (models)."""
    stub, loaded = EditPixelsStub(), []

    def load_pixel_model(source, **kwargs):
        loaded.append(source)
        return types.SimpleNamespace(spec=types.SimpleNamespace(name=source, judge="ViT-B/16", image_size=256))
    monkeypatch.setattr("blend.pixel_editor.edit_pixels", stub)
    monkeypatch.setattr("weights.load_pixel_model", load_pixel_model)
    stub.loaded = loaded
    return stub


# ----------------------------------------------------------------------------- python -m blend: the parser
def test_parser_takes_the_methods_and_bld_with_its_options_is_the_default():
    args = parse_args([])
    assert METHODS == ("bld", "sdedit", "repaint", "diffedit", "inpaint", "blended-diffusion", "local-clip")
    assert args.method == "bld" and not args.given
    assert (args.model, args.steps, args.start, args.samples, args.variant, args.reconstruction, args.shrink) == (
        "sd-2.1-base", None, 0.25, 4, "paper", "none", False)
    for method in PIXEL:
        assert parse_args(["--method", method]).method == method


@pytest.mark.parametrize("method", PIXEL)
def test_pixel_methods_default_to_the_official_scripts_settings(method):
    """adm-256-uncond (its spec: 256x256), 4 samples, 25 of 100 respaced steps skipped, CLIP 1000, range 50, 8 views."""
    args = parse_args(["--method", method])
    assert (args.model, args.samples, args.skip_timesteps, args.respacing, args.clip_guidance, args.range_loss,
            args.views, args.background_loss, args.ddim) == ("adm-256-uncond", 4, 25, "100", 1000.0, 50.0, 8, False,
                                                            False)
    assert weights.presets.get("adm-256-uncond").image_size == 256 and args.given == {"method"}


def test_every_option_that_not_all_methods_take_is_in_the_refusal_table_and_the_tests():
    assert {flags[0][2:] for flags in BLD_ONLY + PIXEL_ONLY} | {"background-loss"} | {  # the editing family's:
        "strength", "jump-length", "jump-n-sample", "encode-ratio", "mask-from"} == set(METHOD_OPTIONS)


# ----------------------------------------------------------------------------- python -m blend: refusals
def test_the_briefs_example_sentence(tmp_path, capsys, no_model_loads):
    assert refused(tmp_path, capsys, ["--method", "blended-diffusion", "--guidance", "7.5"]) == (
        "--guidance is an option of --method bld, sdedit, repaint, diffedit or inpaint (classifier-free guidance); "
        "blended-diffusion is steered by CLIP: see --clip-guidance")


@pytest.mark.parametrize("method", PIXEL)
@pytest.mark.parametrize("option", BLD_ONLY, ids=lambda option: option[0])
def test_a_bld_option_with_a_pixel_method_is_refused_naming_bld(tmp_path, capsys, no_model_loads, method, option):
    """bld's own options (start, variant, …) name bld; those the latent methods share name them all."""
    message = refused(tmp_path, capsys, ["--method", method, *option])
    takes = either(list(METHOD_OPTIONS[option[0][2:]][0]))
    assert message.startswith(f"{option[0]} is an option of --method {takes} (") and f"); {method} " in message


@pytest.mark.parametrize("option", PIXEL_ONLY + [["--background-loss"]], ids=lambda option: option[0])
def test_a_pixel_option_with_bld_is_refused_naming_the_pixel_methods(tmp_path, capsys, no_model_loads, option):
    message = refused(tmp_path, capsys, [*option])              # --method bld by default
    takes = "local-clip" if option[0] == "--background-loss" else "blended-diffusion or local-clip"
    assert message.startswith(f"{option[0]} is an option of --method {takes} (") and "); bld " in message


def test_the_background_loss_is_local_clips_alone(tmp_path, capsys, no_model_loads):
    message = refused(tmp_path, capsys, ["--method", "blended-diffusion", "--background-loss"])
    assert message.startswith("--background-loss is an option of --method local-clip (LPIPS")


@pytest.mark.parametrize("arguments, expected", [
    (["--method", "blended-diffusion", "--model", "sd-2.1-base"], "--model sd-2.1-base: a latent diffusion model"),
    (["--model", "adm-256-uncond"], "--model adm-256-uncond: a pixel diffusion model"),
    (["--method", "local-clip", "--respacing", "10", "--skip-timesteps", "10"],
     "--skip-timesteps 10: expected fewer than the 10 steps of --respacing 10"),
    (["--method", "local-clip", "--respacing", "ten"], "--respacing ten: expected how many of the 1000 training"),
    (["--method", "local-clip", "--respacing", "0"], "--respacing 0: expected how many"),
    (["--method", "blended-diffusion", "--views", "0"], "--views 0: expected at least 1"),
    (["--method", "blended-diffusion", "--skip-timesteps", "-1"], "--skip-timesteps -1: expected at least 0"),
    (["--method", "blended-diffusion", "--clip-guidance", "nan"], "--clip-guidance nan: expected a loss weight"),
    (["--method", "blended-diffusion", "--range-loss", "-1"], "--range-loss -1.0: expected a loss weight"),
    (["--method", "blended-diffusion", "--samples", "0"], "--samples 0: expected at least 1"),
    (["--method", "blended-diffusion", "--seed", "-1"], "--seed -1: expected at least 0"),
])
def test_a_pixel_methods_model_or_value_out_of_range_is_refused(tmp_path, capsys, no_model_loads, arguments,
                                                                 expected):
    assert refused(tmp_path, capsys, arguments).startswith(expected)


def test_a_pickle_model_for_a_pixel_method_needs_allow_pickle(tmp_path, capsys, no_model_loads):
    checkpoint = tmp_path / "adm.pt"
    checkpoint.write_bytes(b"not read")
    message = refused(tmp_path, capsys, ["--method", "blended-diffusion", "--model", str(checkpoint)])
    assert message.startswith(f"--model {checkpoint}: a pickle checkpoint") and "Add --allow-pickle" in message


def test_an_unknown_method_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--method", "p2p"])
    assert exit_.value.code == 2 and "--method: invalid choice: 'p2p'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- python -m blend: runs
def test_cli_passes_each_pixel_option_to_edit_pixels_and_writes_the_ranking(tmp_path, capsys, stub_pixels):
    out = tmp_path / "lc"
    assert main(["--method", "local-clip", "--model", "toy", "--skip-timesteps", "3", "--respacing", "ddim10",
                 "--clip-guidance", "20", "--range-loss", "0", "--views", "2", "--background-loss", "--ddim",
                 "--samples", "2", "--seed", "7", "--device", "cpu", "--dtype", "float32", "--out", str(out)]) == 0
    (call,) = stub_pixels.calls
    assert stub_pixels.loaded == ["toy"]
    assert {name: call[name] for name in ("method", "num_samples", "seed", "skip_timesteps", "respacing",
                                          "clip_guidance_scale", "range_scale", "num_views", "background_loss", "ddim",
                                          "device", "dtype")} == {
        "method": "local-clip", "num_samples": 2, "seed": 7, "skip_timesteps": 3, "respacing": "ddim10",
        "clip_guidance_scale": 20.0, "range_scale": 0.0, "num_views": 2, "background_loss": True, "ddim": True,
        "device": "cpu", "dtype": torch.float32}
    ranking = (out / "ranking.txt").read_text().splitlines()
    assert ranking[0].startswith("# ranked by CLIP ViT-B/16 as Blended Diffusion ranks (local-clip)")
    assert ranking[1:] == ["result_0.png  sample 0  clip_distance 0.500000",
                           "result_1.png  sample 1  clip_distance 1.500000"]
    assert sorted(path.name for path in out.iterdir()) == ["grid.png", "ranking.txt", "result_0.png", "result_1.png"]
    captured = capsys.readouterr()
    assert call["callback"].label == "toy local-clip ddim" and "(local-clip, toy," in captured.out


def test_cli_pixel_method_defaults_reach_edit_pixels_with_adm(tmp_path, stub_pixels):
    assert main(["--method", "blended-diffusion", "--out", str(tmp_path / "bd")]) == 0
    (call,) = stub_pixels.calls
    assert stub_pixels.loaded == ["adm-256-uncond"]
    assert (call["num_samples"], call["seed"], call["skip_timesteps"], call["respacing"], call["clip_guidance_scale"],
            call["range_scale"], call["num_views"], call["background_loss"], call["ddim"]) == (
        4, 42, 25, "100", 1000.0, 50.0, 8, False, False)


def test_cli_pixel_model_that_cannot_load_ends_in_one_paragraph_with_status_1(tmp_path, capsys, monkeypatch):
    def offline(source, **kwargs):
        raise weights.OfflineError("no network to fetch adm-256-uncond")
    monkeypatch.setattr("weights.load_pixel_model", offline)
    assert main(["--method", "blended-diffusion", "--out", str(tmp_path / "o")]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: could not load the model 'adm-256-uncond': no network") and "\n" not in message
    for needed in ("hf download omriav/blended-diffusion checkpoints/256x256_diffusion_uncond.pt",
                   "--method blended-diffusion --allow-pickle --model DIR/", "use --model toy"):
        assert needed in message, message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("method", PIXEL)
def test_cli_toy_runs_each_pixel_method_end_to_end(tmp_path, capsys, method):
    """Offline, two steps: the results and the ranking are written; Blended Diffusion keeps the source's pixels
    outside the mask (its line 8 pastes them), at the toy's 128x128."""
    out = tmp_path / method
    assert main(["--method", method, "--model", "toy", *TINY, "--out", str(out)]) == 0
    result = np.asarray(Image.open(out / "result_0.png"), dtype=np.float32)
    assert result.shape == (128, 128, 3)
    assert (out / "ranking.txt").read_text().splitlines()[1].startswith("result_0.png  sample 0  clip_distance ")
    if method == "blended-diffusion":
        source = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 128), Image.LANCZOS), np.float32)
        keep = np.asarray(Image.open(EXAMPLE_MASK).convert("L").resize((128, 128), Image.NEAREST)) < 128
        assert np.abs(result - source)[keep].max() <= 1
    assert f"({method}, toy," in capsys.readouterr().out


# ----------------------------------------------------------------------------- python -m blend.batch
def test_batch_refuses_a_line_option_its_method_does_not_take_with_the_line_number(tmp_path, capsys,
                                                                                  no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "ok", "method": "local-clip", "background-loss": True},
                              {"id": "a", "method": "blended-diffusion", "guidance": 2},
                              {"id": "b", "views": 2},
                              {"id": "c", "method": "blended-diffusion", "background-loss": True},
                              {"id": "d", "method": "p2p"},
                              {"id": "e", "method": "local-clip", "respacing": 10, "skip-timesteps": 10},
                              {"id": "f", "method": "local-clip", "ddim": 1})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy"]) == 2
    err = capsys.readouterr().err
    for expected in ['line 2: "guidance" is an option of "method": "bld", "sdedit", "repaint", "diffedit" or '
                     '"inpaint" (classifier-free guidance); '
                     'blended-diffusion is steered by CLIP: see "clip-guidance"',
                     'line 3: "views" is an option of "method": "blended-diffusion" or "local-clip" (',
                     'line 4: "background-loss" is an option of "method": "local-clip" (',
                     'line 5: "method": "p2p": expected one of bld, sdedit, repaint, diffedit, inpaint, '
                     'blended-diffusion, local-clip',
                     'line 6: "skip-timesteps": 10: expected fewer than the 10 steps of "respacing": "10"',
                     'line 7: "ddim": expected true or false, found 1']:
        assert f"error: {manifest} {expected}" in err, err
    assert "line 1" not in err and not (tmp_path / "out").exists()


def test_batch_refuses_a_command_line_option_its_method_does_not_take(tmp_path, capsys, no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "a"})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy", "--views", "2"]) == 2
    assert "error: --views is an option of --method blended-diffusion or local-clip" in capsys.readouterr().err
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--method", "local-clip", "--steps", "8"]) == 2
    assert "error: --steps is an option of --method bld" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_runs_each_line_with_its_method_and_that_methods_options(tmp_path, capsys, monkeypatch, stub_pixels):
    """A line's "method" picks the editor; the command line's options reach the lines of its method only."""
    import blend.batch
    latent_calls = []
    real_edit = blend.batch.edit
    monkeypatch.setattr(blend.batch, "edit", lambda *args, **kwargs: latent_calls.append(kwargs)
                        or real_edit(*args, **kwargs))
    manifest = write_manifest(tmp_path, {"id": "a", "method": "bld", "steps": 4},
                              {"id": "b", "method": "local-clip", "views": 3, "respacing": 50},
                              {"id": "c", "skip-timesteps": 5})
    out = tmp_path / "out"
    assert batch_main([manifest, "--out", str(out), "--model", "toy", "--method", "blended-diffusion",
                       "--clip-guidance", "100", "--samples", "1"]) == 0
    (latent,) = latent_calls
    assert latent["steps"] == 4 and latent["num_samples"] == 1 and "clip_guidance_scale" not in latent
    b, c = stub_pixels.calls
    assert (b["method"], b["num_views"], b["respacing"], b["clip_guidance_scale"], b["skip_timesteps"]) == (
        "local-clip", 3, "50", 100.0, 25)
    assert (c["method"], c["num_views"], c["clip_guidance_scale"], c["skip_timesteps"]) == (
        "blended-diffusion", 8, 100.0, 5)
    assert stub_pixels.loaded == ["toy"]                                     # once, for both pixel items
    assert (out / "b" / "ranking.txt").is_file() and not (out / "a" / "ranking.txt").exists()


def test_batch_pixel_lines_run_on_adm_unless_a_model_is_given(tmp_path, capsys, stub_pixels):
    manifest = write_manifest(tmp_path, {"id": "a", "method": "blended-diffusion"})
    assert batch_main([manifest, "--out", str(tmp_path / "out")]) == 0       # --method bld, no --model
    assert stub_pixels.loaded == ["adm-256-uncond"]


# ----------------------------------------------------------------------------- blend.app
def png(path, size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).resize(size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def toy():
    return weights.load("toy")


def form(**fields) -> dict:
    base = {"image": ("photo.png", png(EXAMPLE_IMAGE)), "mask": ("mask.png", png(EXAMPLE_MASK, mode="L")),
            "prompt": (None, b"a cat")}
    return {**base, **{name.replace("_", "-"): (None, str(value).encode()) for name, value in fields.items()}}


def test_app_form_takes_a_pixel_method_and_its_options_and_refuses_the_others_as_the_cli(tmp_path, toy):
    from blend.app.form import FormError, edit_request
    ask = dict(model_name="toy", components=toy, output_root=tmp_path)
    request = edit_request(form(method="local-clip", views="2", background_loss="on", shrink="off", steps=""), **ask)
    assert request.method == "local-clip" and request.options == {
        "num_samples": 4, "seed": 42, "skip_timesteps": 25, "respacing": "100", "clip_guidance_scale": 1000.0,
        "range_scale": 50.0, "num_views": 2, "background_loss": True, "ddim": False}
    assert edit_request(form(steps="8"), **ask).method == "bld"
    for fields, message in [
            (dict(method="blended-diffusion", guidance="7.5"), "--guidance is an option of --method bld"),
            (dict(views="3"), "--views is an option of --method blended-diffusion or local-clip"),
            (dict(method="blended-diffusion", background_loss="on"), "--background-loss is an option of --method "
                                                                     "local-clip"),
            (dict(method="local-clip", respacing="10", skip_timesteps="12"), "--skip-timesteps 12: expected fewer"),
            (dict(method="p2p"), "argument --method: invalid choice: 'p2p'")]:
        with pytest.raises(FormError, match="^" + message.replace("+", r"\+")):
            edit_request(form(**fields), **ask)


def test_app_runs_a_pixel_job_on_its_pixel_model_with_previews_and_a_ranking(tmp_path, toy, stub_pixels):
    """POST /api/edit with method=blended-diffusion: 400 for a bld option, else a job whose results are ranked."""
    import http.client
    import time

    from helpers import running_edit_server
    with running_edit_server(toy, tmp_path / "out") as server:
        info = server.info()
        assert info["methods"] == list(METHODS) and info["pixel_model"] == "toy"
        assert (info["defaults"]["method"], info["defaults"]["views"], info["defaults"]["respacing"]) == (
            "bld", 8, "100")

        def post(**fields):
            boundary = "b0undary"
            parts = b"".join(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
                + (f'; filename="{name}.png"\r\n\r\n'.encode() if isinstance(value, bytes) else b"\r\n\r\n")
                + (value if isinstance(value, bytes) else str(value).encode()) + b"\r\n"
                for name, value in fields.items()) + f"--{boundary}--\r\n".encode()
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            connection.request("POST", "/api/edit", parts,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        common = dict(image=png(EXAMPLE_IMAGE), mask=png(EXAMPLE_MASK, mode="L"), prompt="a cat")
        status, answer = post(**common, method="blended-diffusion", steps="20")
        assert status == 400 and answer["error"].startswith("--steps is an option of --method bld")
        status, answer = post(**common, method="blended-diffusion", samples=2, views=1)
        assert status == 202
        deadline = time.monotonic() + 30
        while (job := server.jobs.status(answer["job"]))["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert job["state"] == "done", job["error"]
    assert len(job["results"]) == 2 and job["ranking"] and len(job["previews"]) >= 1 and job["steps"] == 2
    (call,) = stub_pixels.calls
    assert call["method"] == "blended-diffusion" and call["num_views"] == 1 and stub_pixels.loaded == ["toy"]
