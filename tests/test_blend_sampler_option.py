"""The sampler choice: `python -m blend --sampler`, `edit(sampler=...)`, the manifest's "sampler" of
`python -m blend.batch`, and blend.app's form and /api/info."""
import io

import numpy as np
import pytest
from helpers import write_manifest
from PIL import Image

import weights
from blend import edit
from blend.batch import main as batch_main
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK, main
from blend.editor import EditInputError, build_sampler
from blend.options import DEFAULT_STEPS, SAMPLERS, default_sampler, default_steps, samplers_of
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model (or CLIP) fails the test: a refusal must come before all loading."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    for name in ("blend.cli.load_model", "blend.cli.load_clip", "blend.editor.load_model", "blend.batch.load_model"):
        monkeypatch.setattr(name, forbidden)


REFUSED = [  # (variant, sampler, the sampler the refusal offers), with a model each variant accepts
    ("official", "dpm++2m", "ddim"), ("official", "euler", "ddim"), ("official-ldm", "dpm++2m", "ddim"),
    ("official-sdxl", "ddim", "euler"), ("official-sdxl", "dpm++2m", "euler"),
]
MODEL_OF = {"official": "sd-2.1-base", "official-ldm": "ldm-txt2img-f8-large", "official-sdxl": "sdxl-base-1.0"}


def test_each_variant_runs_its_scripts_sampler_by_default_and_the_paper_takes_all_three():
    assert {variant: default_sampler(variant) for variant in MODEL_OF} == {
        "official": "ddim", "official-ldm": "ddim", "official-sdxl": "euler"}
    assert default_sampler("paper") == "ddim" and set(samplers_of("paper")) == set(SAMPLERS) == {
        "ddim", "euler", "dpm++2m"}
    spec = weights.spec_of("sd-2.1-base")
    assert isinstance(build_sampler("dpm++2m", spec, 20), DPMSolverSampler)
    assert isinstance(build_sampler("euler", spec, 20), EulerSampler)
    official = build_sampler("ddim", spec, 50, variant="official")
    assert isinstance(official, DDIMSampler) and int(official.timesteps[0]) == 980       # the script's offset 0
    ldm = weights.spec_of("ldm-txt2img-f8-large")                  # CompVis's uniform spacing, for both
    assert build_sampler("dpm++2m", ldm, 50).timesteps.tolist() == build_sampler("ddim", ldm, 50).timesteps.tolist()


@pytest.mark.parametrize("variant, sampler, offered", REFUSED)
def test_cli_refuses_a_sampler_the_variant_cannot_run_before_loading_naming_what_to_choose(
        tmp_path, capsys, no_model_loads, variant, sampler, offered):
    before = sorted(tmp_path.rglob("*"))
    arguments = ["--model", MODEL_OF[variant], "--variant", variant, "--sampler", sampler, "--out", str(tmp_path / "o")]
    assert main(arguments) == 2
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert message.startswith("error: ") and message.count("\n") == 0, captured.err
    for needed in (f"--sampler {sampler}", f"--variant {variant}", f"choose --sampler {offered}",
                   f"--variant paper (Algorithm 1 as the paper intends it) for {sampler}"):
        assert needed in message, message
    assert sorted(tmp_path.rglob("*")) == before and not captured.out


def test_cli_refuses_an_unknown_sampler_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "toy", "--sampler", "dpm++3m"])
    assert exit_.value.code == 2 and "--sampler: invalid choice: 'dpm++3m'" in capsys.readouterr().err


def test_edit_refuses_the_same_combinations_before_loading(no_model_loads):
    with pytest.raises(EditInputError, match=r"sampler='dpm\+\+2m': variant='official' reproduces .* runs only "
                                             r"sampler='ddim'"):
        edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", variant="official", sampler="dpm++2m")
    with pytest.raises(EditInputError, match=r"sampler='heun': expected one of ddim, euler, dpm\+\+2m"):
        edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", sampler="heun")


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler"])
def test_cli_toy_runs_the_paper_variant_with_the_sampler_end_to_end(tmp_path, capsys, monkeypatch, sampler):
    """Offline and fast: the masked region becomes a cat photograph's, the rest stays the source's pixels (the toy's
    working size is the photograph's, 128 px, so outside the mask a result is the source resized down and up)."""
    import blend.cli
    samplers = []
    real_edit = blend.cli.edit
    monkeypatch.setattr(blend.cli, "edit", lambda *args, **kwargs: samplers.append(kwargs["sampler"])
                        or real_edit(*args, **kwargs))
    out = tmp_path / "toy"
    assert main(["--model", "toy", "--sampler", sampler, "--steps", "20", "--samples", "2", "--out", str(out)]) == 0
    assert samplers == [sampler] and str(out) in capsys.readouterr().out
    source = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"), dtype=np.float32)
    mask = np.asarray(Image.open(EXAMPLE_MASK).convert("L")) >= 128
    down_up = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 128), Image.LANCZOS)
                         .resize(source.shape[1::-1], Image.LANCZOS), dtype=np.float32)
    far = ~dilated(mask, 12)
    for index in range(2):
        result = np.asarray(Image.open(out / f"result_{index}.png"), dtype=np.float32)
        assert np.abs(result - source)[mask].mean() > 40            # the cup was replaced
        assert np.abs(result - down_up)[far].max() <= 1             # the rest is the source, up to rounding


def dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


# ----------------------------------------------------------------------------- python -m blend.batch
def test_batch_refuses_a_manifest_sampler_its_variant_cannot_run_with_the_line_number(tmp_path, capsys,
                                                                                     no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "ok", "sampler": "dpm++2m"},
                              {"id": "bad", "sampler": "dpm++2m", "variant": "official"}, {"id": "odd", "sampler": 2})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy"]) == 2
    err = capsys.readouterr().err
    assert f"{manifest} line 2: \"sampler\": \"dpm++2m\": \"variant\": \"official\" reproduces" in err, err
    assert f"{manifest} line 3: \"sampler\": 2: expected one of ddim, euler, dpm++2m" in err, err
    assert "line 1" not in err and not (tmp_path / "out").exists()


def test_batch_refuses_a_command_line_sampler_its_variant_cannot_run(tmp_path, capsys, no_model_loads):
    manifest = write_manifest(tmp_path, {"id": "a"})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy", "--variant", "official",
                       "--sampler", "euler"]) == 2
    assert "error: --sampler euler: --variant official reproduces" in capsys.readouterr().err


def test_batch_runs_the_manifests_sampler_over_the_command_lines(tmp_path, capsys, monkeypatch):
    """The line's "sampler" overrides --sampler, and reaches edit()."""
    import blend.batch
    seen = []
    real_edit = blend.batch.edit
    monkeypatch.setattr(blend.batch, "edit", lambda *args, **kwargs: seen.append(kwargs["sampler"])
                        or real_edit(*args, **kwargs))
    manifest = write_manifest(tmp_path, {"id": "a", "sampler": "dpm++2m"}, {"id": "b"})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy", "--steps", "8", "--samples", "1",
                       "--sampler", "euler"]) == 0
    assert seen == ["dpm++2m", "euler"]
    assert all((tmp_path / "out" / item / "result_0.png").is_file() for item in ("a", "b"))


# ----------------------------------------------------------------------------- blend.app
def png(path, size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).resize(size).save(buffer, "PNG")
    return buffer.getvalue()


def test_app_form_takes_the_sampler_empty_is_the_variants_and_a_refusal_is_the_clis(tmp_path):
    from blend.app import EditServer
    from blend.app.form import FormError, edit_request
    toy = weights.load("toy")
    fields = {"image": ("photo.png", png(EXAMPLE_IMAGE)), "mask": ("mask.png", png(EXAMPLE_MASK, mode="L")),
              "prompt": (None, b"a cat")}
    ask = dict(model_name="toy", components=toy, output_root=tmp_path)
    assert edit_request({**fields, "sampler": (None, b"dpm++2m")}, **ask).options["sampler"] == "dpm++2m"
    assert edit_request({**fields, "sampler": (None, b"")}, **ask).options["sampler"] is None
    assert edit_request(fields, **ask).options["sampler"] is None
    with pytest.raises(FormError, match=r"--sampler dpm\+\+2m: --variant official reproduces"):
        edit_request({**fields, "sampler": (None, b"dpm++2m"), "variant": (None, b"official")}, **ask)
    server = EditServer(toy, "toy", tmp_path, port=0, quiet=True)
    try:
        info = server.info()
    finally:
        server.server_close()
    assert info["samplers"] == ["ddim", "euler", "dpm++2m"] and info["defaults"]["sampler"] == ""


# ----------------------------------------------------------------------------- the steps each sampler runs by default
@pytest.fixture
def built_samplers(monkeypatch):
    """[(sampler name, steps)] of every sampler blend.edit builds (the toy runs for real)."""
    import blend.editor
    built, real = [], blend.editor.build_sampler
    monkeypatch.setattr(blend.editor, "build_sampler", lambda name, spec, steps, *args: built.append((name, steps))
                        or real(name, spec, steps, *args))
    return built


def test_default_steps_follow_the_toy_sampler_table_and_repaint_keeps_50():
    assert DEFAULT_STEPS == {"ddim": 50, "euler": 50, "dpm++2m": 30}
    assert default_steps() == default_steps("bld", "ddim") == default_steps("bld", variant="official") == 50
    assert default_steps("bld", variant="official-sdxl") == default_steps("sdedit", "euler") == 50
    assert default_steps("bld", "dpm++2m") == default_steps("inpaint", "dpm++2m") == 30
    assert default_steps("diffedit") == default_steps("sdedit") == 50
    assert default_steps("repaint") == 50


@pytest.mark.parametrize("sampler, steps", [(None, 50), ("ddim", 50), ("euler", 50), ("dpm++2m", 30)])
def test_edit_without_steps_runs_the_samplers_default(built_samplers, sampler, steps):
    edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", num_samples=1, size=16, sampler=sampler)
    assert built_samplers == [(sampler or "ddim", steps)]


def test_edit_with_steps_runs_them_whatever_the_sampler(built_samplers):
    edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", num_samples=1, size=16, sampler="dpm++2m", steps=12)
    edit(EXAMPLE_IMAGE, EXAMPLE_MASK, "a cat", model="toy", num_samples=1, size=16, method="sdedit", steps=50,
         sampler="dpm++2m")
    assert built_samplers == [("dpm++2m", 12), ("dpm++2m", 50)]


def test_edit_estimates_the_mask_at_ddims_default_so_mask_from_prompt_gives_the_same(built_samplers):
    edit(EXAMPLE_IMAGE, None, "a cat", model="toy", num_samples=1, size=16, method="sdedit", sampler="dpm++2m",
         mask_from="coffee")
    assert built_samplers == [("ddim", 50), ("dpm++2m", 30)]     # the estimate's DDIM, then the method's sampler


@pytest.mark.parametrize("arguments, steps", [([], 50), (["--sampler", "euler"], 50), (["--sampler", "dpm++2m"], 30),
                                              (["--sampler", "dpm++2m", "--steps", "50"], 50),
                                              (["--steps", "7"], 7)])
def test_cli_runs_the_samplers_default_steps_unless_steps_is_given(tmp_path, capsys, built_samplers, arguments,
                                                                   steps):
    assert main(["--model", "toy", "--samples", "1", "--size", "16", "--out", str(tmp_path / "o"), *arguments]) == 0
    assert [steps for _, steps in built_samplers] == [steps] and str(tmp_path / "o") in capsys.readouterr().out


def test_cli_help_gives_each_samplers_default_steps_and_where_they_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: the sampler's, 50 for ddim, 50 for euler, 30 for dpm++2m" in help_text, help_text
    assert 'benchmarks/README.md, "Samplers against the exact solution"' in help_text and "50 for repaint" in help_text


def test_batch_line_runs_its_samplers_default_steps_and_given_steps_win(tmp_path, built_samplers):
    manifest = write_manifest(tmp_path, {"id": "dpm", "sampler": "dpm++2m"}, {"id": "ddim"},
                              {"id": "given", "sampler": "dpm++2m", "steps": 9})
    assert batch_main([manifest, "--out", str(tmp_path / "out"), "--model", "toy", "--samples", "1",
                       "--size", "16"]) == 0
    assert built_samplers == [("dpm++2m", 30), ("ddim", 50), ("dpm++2m", 9)]
    built_samplers.clear()
    assert batch_main([manifest, "--out", str(tmp_path / "again"), "--model", "toy", "--samples", "1", "--size", "16",
                       "--steps", "6"]) == 0                                  # --steps for the lines without "steps"
    assert built_samplers == [("dpm++2m", 6), ("ddim", 6), ("dpm++2m", 9)]


def test_app_form_empty_steps_is_the_samplers_default(tmp_path, built_samplers):
    from blend.app import EditServer
    from blend.app.form import edit_request
    toy = weights.load("toy")
    fields = {"image": ("photo.png", png(EXAMPLE_IMAGE)), "mask": ("mask.png", png(EXAMPLE_MASK, mode="L")),
              "prompt": (None, b"a cat"), "sampler": (None, b"dpm++2m")}
    ask = dict(model_name="toy", components=toy, output_root=tmp_path)
    assert edit_request({**fields, "steps": (None, b"")}, **ask).options["steps"] is None
    assert edit_request({**fields, "steps": (None, b"12")}, **ask).options["steps"] == 12
    request = edit_request(fields, **ask)
    edit(request.image, request.mask, request.prompt, model=toy, **{**request.options, "num_samples": 1, "size": 16})
    assert built_samplers == [("dpm++2m", 30)]
    server = EditServer(toy, "toy", tmp_path, port=0, quiet=True)
    try:
        info = server.info()
    finally:
        server.server_close()
    assert info["defaults"]["steps"] == "" and info["default_steps"] == DEFAULT_STEPS and info["repaint_steps"] == 50
