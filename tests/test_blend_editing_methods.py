"""The editing family's wiring: `--method sdedit|repaint|diffedit|inpaint` and `--mask-from` in python -m blend,
blend.edit, the manifest of python -m blend.batch and blend.app. What each method computes is tested beside its
module (tests/test_blend_sdedit.py, …); here, that each is reached with its options, that every option a method
does not take is refused with exit 2 naming the method that takes it, and that the toy runs each end to end.
Every check is exact or a property of the toy's closed form; none is a float bound."""
import io
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from blend import edit
from blend.batch import main as batch_main
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK, main
from blend.editor import EditInputError, mask_from_prompt
from blend.options import DEFAULT_MODELS, LATENT_METHODS, METHOD_OPTIONS, METHODS, either
from blend.repaint import repaint_network_calls
from weights.toy import load_toy

# A value each option takes (given is given, whatever the value): the refusals do not depend on it.
GIVEN = {"steps": ["8"], "guidance": ["7.5"], "start": ["0.25"], "variant": ["paper"], "sampler": ["ddim"],
         "shrink": [], "reconstruction": ["none"], "vae": ["fp16-fix"], "rank": [], "size": ["64"],
         "strength": ["0.5"], "jump-length": ["10"], "jump-n-sample": ["10"], "encode-ratio": ["0.8"],
         "mask-from": ["coffee"], "skip-timesteps": ["25"], "respacing": ["100"], "clip-guidance": ["1000"],
         "range-loss": ["50"], "views": ["8"], "ddim": [], "background-loss": []}
REFUSALS = [(method, option) for option, (takers, _, _) in METHOD_OPTIONS.items() for method in METHODS
            if method not in takers]
NEW = ("sdedit", "repaint", "diffedit", "inpaint")
SMALL = ["--model", "toy", "--samples", "1", "--seed", "3"]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model fails the test: the refusals come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    for name in ("blend.cli.load_model", "blend.cli.load_clip", "blend.editor.load_model", "blend.batch.load_model",
                 "weights.load_pixel_model"):
        monkeypatch.setattr(name, forbidden)


def refused(tmp_path, capsys, arguments) -> str:
    """main() exits 2 with one line `error: ...`, writing nothing; the line without its prefix."""
    before = sorted(tmp_path.rglob("*"))
    assert main([*arguments, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("error: ") and not captured.out, captured.err
    assert sorted(tmp_path.rglob("*")) == before
    return message.removeprefix("error: ")


def photo_and_mask(folder, size=32) -> tuple:
    """The example and its mask at size x size, saved in `folder` (paths) and as arrays (mask: True = edit)."""
    image = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((size, size), Image.LANCZOS)
    mask = Image.open(EXAMPLE_MASK).convert("L").resize((size, size), Image.NEAREST)
    image.save(folder / "photo.png")
    mask.save(folder / "mask.png")
    return folder / "photo.png", folder / "mask.png", np.asarray(image, np.float32), np.asarray(mask) >= 128


@pytest.fixture(scope="module")
def toy():
    return weights.load("toy")


def nine_channel(toy):
    """The toy seen as an inpainting model: its UNet takes [z_t | mask | masked latent] (2·3 + 1 channels) and
    reads z_t alone, so that the inpainting wiring (extra channels, masked image, strength) runs offline."""
    class NineChannelToy(torch.nn.Module):
        config = types.SimpleNamespace(in_channels=7, out_channels=3)

        def __init__(self):
            super().__init__()
            self.toy = toy.unet
            self.seen = []

        def forward(self, z, timesteps, context):
            self.seen.append(z.shape[1])
            return self.toy(z[:, :3], timesteps, context)
    return weights.Components(NineChannelToy(), toy.vae, toy.text_encoder, toy.tokenizer, toy.spec)


# ----------------------------------------------------------------------------- refusals, before any model loads
@pytest.mark.parametrize("method, option", REFUSALS, ids=[f"{m}-{o}" for m, o in REFUSALS])
def test_every_option_a_method_does_not_take_is_refused_naming_the_methods_that_do(tmp_path, capsys, no_model_loads,
                                                                                  method, option):
    takers = METHOD_OPTIONS[option][0]
    message = refused(tmp_path, capsys, ["--method", method, f"--{option}", *GIVEN[option]])
    assert message.startswith(f"--{option} is an option of --method {either(list(takers))} ("), message
    assert f"); {method}" in message or f"); {method}'s" in message


def test_the_table_covers_every_new_option_and_the_methods_and_their_default_models():
    assert set(GIVEN) == set(METHOD_OPTIONS)
    assert METHODS == (*LATENT_METHODS, "blended-diffusion", "local-clip") and LATENT_METHODS[0] == "bld"
    assert {option for option, (takers, _, _) in METHOD_OPTIONS.items() if takers == ("sdedit", "inpaint")} == {
        "strength"}
    assert [DEFAULT_MODELS[method] for method in NEW] == ["sd-2.1-base"] * 3 + ["sd-2-inpainting"]


@pytest.mark.parametrize("arguments, expected", [
    (["--mask-from", "coffee", "--image", str(EXAMPLE_IMAGE), "--mask", str(EXAMPLE_MASK)],
     "--mask and --mask-from were both given"),
    (["--method", "diffedit", "--mask-from", "", "--mask", str(EXAMPLE_MASK)], "--mask and --mask-from were both"),
    (["--method", "repaint", "--image", str(EXAMPLE_IMAGE)], "--image was given without --mask"),
    (["--mask-from", "a cat"], "--mask-from 'a cat' is the prompt itself"),
    (["--method", "inpaint", "--model", "toy"], "--model toy: --method inpaint needs an inpainting model"),
    (["--method", "inpaint", "--model", "sd-2.1-base"], "--model sd-2.1-base: --method inpaint needs an inpainting"),
    (["--method", "sdedit", "--model", "sd-2-inpainting"], "--model sd-2-inpainting: an inpainting model (its UNet "
                                                           "takes the mask and the masked image as 5 more input"),
    (["--model", "sd-1.5-inpainting"], "--model sd-1.5-inpainting: an inpainting model"),
    (["--method", "diffedit", "--sampler", "euler"], "--sampler euler: diffedit runs ddim only"),
    (["--method", "sdedit", "--strength", "0.01", "--steps", "50"], "--strength 0.01: expected the fraction t0"),
    (["--method", "inpaint", "--strength", "1.5"], "--strength 1.5: expected the fraction t0"),
    (["--method", "diffedit", "--encode-ratio", "0"], "--encode-ratio 0.0: expected the fraction of the steps"),
    (["--method", "repaint", "--jump-length", "0"], "--jump-length 0: expected at least 1"),
    (["--method", "repaint", "--jump-n-sample", "0"], "--jump-n-sample 0: expected at least 1 (1 samples each"),
    (["--mask-from", "coffee", "--steps", "1"], "--steps 1: --mask-from coffee estimates the mask at half"),
])
def test_mask_options_models_and_ranges_of_the_new_methods_are_refused_before_loading(
        tmp_path, capsys, no_model_loads, arguments, expected):
    assert refused(tmp_path, capsys, arguments).startswith(expected)


def test_inpaint_message_names_both_inpainting_presets(tmp_path, capsys, no_model_loads):
    message = refused(tmp_path, capsys, ["--method", "inpaint", "--model", "toy"])
    assert "sd-1.5-inpainting or sd-2-inpainting" in message and "the toy has no extra input channels" in message


def test_inpaint_on_a_checkpoint_file_of_a_text_to_image_model_is_refused_once_loaded(tmp_path, capsys, monkeypatch,
                                                                                     toy):
    """A file's name cannot tell: its UNet can, once loaded (exit 2, nothing written)."""
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"header")
    monkeypatch.setattr("blend.cli.load_model", lambda *args, **kwargs: toy)
    message = refused(tmp_path, capsys, ["--method", "inpaint", "--model", str(checkpoint)])
    assert message.startswith(f"--model {checkpoint}: --method inpaint needs an inpainting model")


def test_python_edit_refuses_what_the_cli_refuses(toy):
    cases = [(dict(method="sdedit", shrink=True), "shrink is an option of method='bld'"),
             (dict(method="repaint", strength=0.5), "strength is an option of method='sdedit' or 'inpaint'"),
             (dict(method="diffedit", jump_length=3), "jump_length is an option of method='repaint'"),
             (dict(method="bld", encode_ratio=0.5), "encode_ratio is an option of method='diffedit'"),
             (dict(method="repaint", mask=None), "method='repaint' edits inside a mask: give mask"),
             (dict(mask_from="coffee"), "mask and mask_from were both given"),
             (dict(method="inpaint"), "model='toy': method='inpaint' needs an inpainting model")]
    for options, message in cases:
        options = {"mask": EXAMPLE_MASK, **options}
        with pytest.raises(EditInputError, match="^" + message.replace("(", r"\(")):
            edit(EXAMPLE_IMAGE, options.pop("mask"), "a cat", model=toy, **options)


# ----------------------------------------------------------------------------- python -m blend on the toy
def test_cli_sdedit_runs_without_a_mask_and_regenerates_the_whole_photograph(tmp_path, capsys):
    photo, _, source, _ = photo_and_mask(tmp_path)
    out = tmp_path / "sdedit"
    assert main(["--method", "sdedit", "--image", str(photo), "--strength", "0.5", "--steps", "4", "--size", "32",
                 *SMALL, "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["grid.png", "result_0.png"]
    result = np.asarray(Image.open(out / "result_0.png"), np.float32)
    assert (np.abs(result - source).mean(-1) > 0).mean() > 0.9          # no background is kept
    assert "(sdedit, toy," in capsys.readouterr().out


def test_cli_repaint_prints_its_cost_first_and_keeps_the_known_region_exactly(tmp_path, capsys, monkeypatch):
    """The toy decodes z ↦ z, and RePaint's last step sets the known region to z_init itself: outside the mask the
    result is the photograph, to the 8-bit level. The cost is on stderr before the edit starts."""
    import blend.cli
    photo, mask_path, source, mask = photo_and_mask(tmp_path)
    out, before_the_run, real_edit = tmp_path / "repaint", [], blend.cli.edit
    monkeypatch.setattr(blend.cli, "edit", lambda *args, **kwargs: before_the_run.append(capsys.readouterr().err)
                        or real_edit(*args, **kwargs))
    assert main(["--method", "repaint", "--image", str(photo), "--mask", str(mask_path), "--steps", "2", "--size",
                 "32", "--jump-length", "1", "--jump-n-sample", "2", *SMALL, "--out", str(out)]) == 0
    result = np.asarray(Image.open(out / "result_0.png"), np.float32)
    assert np.abs(result - source)[~mask].max() <= 1 and np.abs(result - source)[mask].mean() > 10
    calls = repaint_network_calls(2, 1, 2)
    assert calls == 3 and before_the_run[0].splitlines()[-1] == (
        "repaint: 3 network calls per result (2 steps, 2 passes over each stretch of 1): 1.5x the 2 of one pass; bld "
        "makes 2 at its default --start 0.25")


def test_cli_diffedit_decodes_with_the_inverted_background(tmp_path, capsys):
    photo, mask_path, source, mask = photo_and_mask(tmp_path)
    out = tmp_path / "diffedit"
    assert main(["--method", "diffedit", "--image", str(photo), "--mask", str(mask_path), "--steps", "4",
                 "--size", "32", "--encode-ratio", "0.5", *SMALL, "--out", str(out)]) == 0
    result = np.asarray(Image.open(out / "result_0.png"), np.float32)
    outside, inside = np.abs(result - source)[~mask].mean(), np.abs(result - source)[mask].mean()
    assert outside < inside / 4, (outside, inside)   # the background: DDIM's inversion of the photograph, kept


def test_cli_mask_from_writes_the_estimated_mask_beside_the_results(tmp_path, capsys, toy):
    """--mask-from replaces --mask: mask-from.png is the photograph's size, white = edit, and the very mask that
    blend.app's button gets (mask_from_prompt) for the same model, seed, steps and size."""
    photo, _, _, _ = photo_and_mask(tmp_path, size=40)
    out = tmp_path / "mask-from"
    assert main(["--image", str(photo), "--mask-from", "coffee", "--steps", "4", "--size", "20", *SMALL,
                 "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["grid.png", "mask-from.png", "result_0.png"]
    written = np.asarray(Image.open(out / "mask-from.png"))
    assert written.shape == (40, 40) and set(np.unique(written)) == {0, 255}
    expected = mask_from_prompt(photo, "a cat", "coffee", model=toy, steps=4, size=20, seed=3)
    assert (written == expected * 255).all()
    assert "mask-from.png (the estimated mask)" in capsys.readouterr().out


def two_class_toy(folder):
    """A toy of two 16x16 photographs, "cat" and "coffee", equal but for their centre 8x8 (a quarter)."""
    grey = np.full((16, 16, 3), 128, np.uint8)
    cat, coffee = grey.copy(), grey.copy()
    cat[4:12, 4:12], coffee[4:12, 4:12] = (250, 40, 40), (20, 60, 230)
    folder.mkdir()
    Image.fromarray(cat).save(folder / "cat_0.png")
    Image.fromarray(coffee).save(folder / "coffee_0.png")
    return weights.Components(*load_toy(folder=folder)), coffee


def test_mask_from_covers_the_region_where_the_two_prompts_classes_differ(tmp_path, capsys, monkeypatch):
    """With one photograph a class, the toy's ε̂ for a class is (z_t − √ᾱ·x_class)/√(1−ᾱ) at every noise, so
    |ε_cat − ε_coffee| is √ᾱ/√(1−ᾱ)·|x_cat − x_coffee|: zero outside the centre, the same inside, where it is 4×
    its mean, above DiffEdit's threshold 1.5× the mean. The mask is the centre, exactly; BLD then paints the
    cat's centre there and keeps the rest."""
    components, coffee = two_class_toy(tmp_path / "data")
    Image.fromarray(coffee).save(tmp_path / "photo.png")
    monkeypatch.setattr("blend.cli.load_model", lambda *args, **kwargs: components)
    out = tmp_path / "out"
    assert main(["--image", str(tmp_path / "photo.png"), "--mask-from", "coffee", "--steps", "4", "--size", "16",
                 *SMALL, "--out", str(out)]) == 0
    estimated = np.asarray(Image.open(out / "mask-from.png")) > 127
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    assert (estimated == expected).all()
    result = np.asarray(Image.open(out / "result_0.png")).astype(int)
    assert (result[~expected] == 128).all() and result[expected][:, 0].mean() > result[expected][:, 2].mean()


# ----------------------------------------------------------------------------- blend.edit: the inpainting wiring
def test_inpaint_gives_the_unet_the_mask_and_the_masked_image_and_mask_from_asks_it_fully_masked(tmp_path, toy):
    """On a stand-in inpainting UNet (the toy reading z_t alone): every call gets 2C + 1 channels; with
    --mask-from the estimate runs it as a text-to-image model (mask all ones, the masked image all grey), and
    gives the toy's own mask."""
    photo, mask_path, _, _ = photo_and_mask(tmp_path, size=24)
    inpainting = nine_channel(toy)
    results = edit(photo, mask_path, "a cat", model=inpainting, method="inpaint", steps=3, num_samples=2, seed=1,
                   size=24)
    assert len(results) == 2 and set(inpainting.unet.seen) == {7}
    with pytest.raises(EditInputError, match="an inpainting model .* which only method='inpaint' runs"):
        edit(photo, mask_path, "a cat", model=inpainting, method="bld")
    estimated = mask_from_prompt(photo, "a cat", "coffee", model=inpainting, steps=4, seed=2, size=24)
    assert (estimated == mask_from_prompt(photo, "a cat", "coffee", model=toy, steps=4, seed=2, size=24)).all()
    with_mask_from = edit(photo, None, "a cat", model=inpainting, method="inpaint", steps=4, num_samples=1, seed=2,
                          mask_from="coffee", size=24)
    assert (with_mask_from[0].info["mask"] == estimated).all()


# ----------------------------------------------------------------------------- python -m blend.batch
def write_manifest(folder, *lines) -> str:
    photo_and_mask(folder, size=16)
    manifest = folder / "edits.jsonl"
    manifest.write_text("".join(json.dumps({"image": "photo.png", "prompt": "a cat", **line}) + "\n"
                                for line in lines))
    return str(manifest)


def test_batch_refuses_the_new_methods_fields_per_line(tmp_path, capsys, no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "ok", "method": "sdedit", "strength": 0.5},
                              {"id": "a", "method": "repaint", "mask": "mask.png", "strength": 0.5},
                              {"id": "b", "mask": "mask.png", "mask-from": "coffee"},
                              {"id": "c", "method": "diffedit"},
                              {"id": "d", "method": "local-clip", "mask-from": "coffee"},
                              {"id": "e", "method": "inpaint", "mask": "mask.png"},
                              {"id": "f", "method": "diffedit", "mask-from": "a cat"},
                              {"id": "g", "method": "repaint", "mask-from": "", "jump-n-sample": 0})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy"]) == 2
    err = capsys.readouterr().err
    for expected in ['line 2: "strength" is an option of "method": "sdedit" or "inpaint" (',
                     'line 3: "mask" and "mask-from" were both given',
                     'line 4: missing \'mask\'; a line of "method": "diffedit" needs "mask" (white = edit) or '
                     '"mask-from"',
                     'line 5: "mask-from" is an option of "method": "bld", "sdedit", "repaint", "diffedit" or '
                     '"inpaint" (',
                     'line 6: "model": "toy": "method": "inpaint" needs an inpainting model',
                     'line 7: "mask-from": "a cat" is the prompt itself',
                     'line 8: "jump-n-sample": 0: expected at least 1']:
        assert f"error: {manifest} {expected}" in err, err
    assert "line 1" not in err and not (tmp_path / "out").exists()


def test_batch_refuses_a_line_mask_beside_the_command_lines_mask_from(tmp_path, capsys, no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "a", "mask": "mask.png"}, {"id": "b"})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy", "--mask-from", "coffee"]) == 2
    err = capsys.readouterr().err
    assert f"{manifest} line 1: \"mask\" and the command line's --mask-from were both given" in err
    assert "line 2" not in err


def test_batch_runs_each_new_method_with_its_options_and_writes_the_estimated_mask(tmp_path, capsys, monkeypatch):
    import blend.batch
    calls = []
    real_edit = blend.batch.edit
    monkeypatch.setattr(blend.batch, "edit", lambda *args, **kwargs: calls.append(kwargs) or real_edit(*args,
                                                                                                           **kwargs))
    manifest = write_manifest(tmp_path, {"id": "s", "method": "sdedit", "strength": 0.5},
                              {"id": "r", "method": "repaint", "mask": "mask.png", "jump-length": 1,
                               "jump-n-sample": 2, "steps": 2},
                              {"id": "d", "method": "diffedit", "mask-from": "coffee", "encode-ratio": 0.5})
    out = tmp_path / "out"
    assert batch_main([manifest, "--out", str(out), "--model", "toy", "--steps", "4", "--samples", "1",
                       "--start", "0.5", "--size", "16"]) == 0
    s, r, d = calls
    assert (s["method"], s["strength"], s["steps"], "start" not in s) == ("sdedit", 0.5, 4, True)
    assert (r["method"], r["jump_length"], r["jump_n_sample"], r["steps"]) == ("repaint", 1, 2, 2)
    assert (d["method"], d["mask_from"], d["encode_ratio"], d["steps"]) == ("diffedit", "coffee", 0.5, 4)
    assert sorted(path.name for path in (out / "d").iterdir()) == ["grid.png", "mask-from.png", "result_0.png"]
    assert not (out / "s" / "mask-from.png").exists()
    assert "r: repaint: 3 network calls per result" in capsys.readouterr().err


# ----------------------------------------------------------------------------- blend.app
def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def form(**fields) -> dict:
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((24, 24))
    mask = Image.open(EXAMPLE_MASK).convert("L").resize((24, 24))
    base = {"image": ("photo.png", png(photo)), "mask": ("mask.png", png(mask)), "prompt": (None, b"a cat")}
    return {**base, **{name.replace("_", "-"): (None, str(value).encode()) for name, value in fields.items()}}


def test_app_form_takes_each_new_method_and_its_options_and_refuses_the_others(tmp_path, toy):
    from blend.app.form import FormError, edit_request
    ask = dict(model_name="toy", components=toy, output_root=tmp_path)
    request = edit_request(form(method="repaint", jump_length="2", jump_n_sample="3", steps="6"), **ask)
    assert request.method == "repaint" and (request.options["jump_length"], request.options["jump_n_sample"],
                                            request.options["steps"]) == (2, 3, 6)
    fields = form(method="sdedit", strength="0.3")
    del fields["mask"]                                            # SDEdit needs none: the whole photograph
    sdedit = edit_request(fields, **ask)
    assert sdedit.options["strength"] == 0.3 and sdedit.mask.all() and sdedit.mask.shape == (24, 24)
    for fields, message in [(dict(method="bld", strength="0.5"), "--strength is an option of --method sdedit or "
                                                                  "inpaint"),
                            (dict(method="sdedit", start="0.5"), "--start is an option of --method bld"),
                            (dict(method="inpaint"), "--model toy: --method inpaint needs an inpainting model"),
                            (dict(method="diffedit", sampler="euler"), "--sampler euler: diffedit runs ddim only")]:
        with pytest.raises(FormError, match="^" + message):
            edit_request(form(**fields), **ask)


def test_app_mask_from_endpoint_answers_the_estimated_mask_as_a_png(tmp_path, toy):
    import http.client

    from helpers import running_edit_server
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((30, 20))

    def post(server, **fields):
        boundary = "b0undary"
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
            + (b'; filename="photo.png"\r\n\r\n' if isinstance(value, bytes) else b"\r\n\r\n")
            + (value if isinstance(value, bytes) else str(value).encode()) + b"\r\n"
            for name, value in fields.items()) + f"--{boundary}--\r\n".encode()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("POST", "/api/mask-from", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()

    with running_edit_server(toy, tmp_path / "out") as server:
        assert server.info()["model_methods"] == ["bld", "sdedit", "repaint", "diffedit"]
        status, kind, body = post(server, image=png(photo), prompt="a cat", reference="coffee", seed=5, steps=6)
        assert (status, kind) == (200, "image/png")
        answered = np.asarray(Image.open(io.BytesIO(body)))
        expected = mask_from_prompt(photo, "a cat", "coffee", model=toy, steps=6, seed=5)
        assert answered.shape == (20, 30) and answered.any() and (answered == expected * 255).all()
        for fields, message in [(dict(prompt="a cat", reference="a cat"), "the reference text 'a cat' is the prompt"),
                                (dict(prompt="a cat", reference="a dog"), "the toy model knows only the classes"),
                                (dict(prompt="a cat", reference="", steps=1), "--steps 1: --mask-from  estimates")]:
            status, _, body = post(server, image=png(photo), **fields)
            assert status == 400 and json.loads(body)["error"].startswith(message), body
