"""The editor's options and their valid ranges, checked before any model is loaded.

`option_problem(...)` returns the first problem as one sentence (what was expected, what was
found, what to do), or None. `edit()` raises it as an EditInputError; `python -m blend` prints it
and exits with status 2. The ranges:

    steps            1 … 999 with SD's timestep offset 1 (the paper variant), 1 … 1000 with offset 0
                     (--variant official): "leading" timesteps i·(1000 // S) + offset must stay below
                     T = 1000 (samplers.ddim_timesteps decides). None: the sampler's default (default_steps:
                     DEFAULT_STEPS, 50 for DDIM and Euler, 30 for DPM-Solver++(2M))
    start            finite, in [0, 1): the loop skips int(steps · start) steps, which is then below
                     steps (also in floating point), so at least one step runs
    guidance_scale   any finite number (None: the model's default)
    num_samples      1 or more
    seed             0 … 2**64 − 1, what torch.Generator.manual_seed takes. Negative seeds are refused:
                     torch maps −n to 2**64 − n, so −1 would silently be the same run as 2**64 − 1
    size             at least what each side must divide by: 64 for SD and the LDM (8 in the autoencoder,
                     8 in the UNet; assumed for a checkpoint path), 32 for SDXL, 16 for tiny, 1 for the
                     toy. Above LARGE_SIZE it only warns (memory and time grow quickly past the training
                     size). The photograph itself may be as small as 1x1: blend.editor.working_size gives
                     each side at least one multiple
    device           cpu, cuda, cuda:N (N below the number of GPUs), mps or xpu, and available here
    model            a model name (weights.MODEL_NAMES: "toy" and the presets), or an existing, readable
                     folder or non-empty .safetensors / .ckpt / .pt / .pth / .bin file (a missing one is not
                     looked for on the Hub: only preset names are; "" is refused, not read as ".")
    rank             a CLIP name (ViT-B/16, ViT-L/14, tiny) or a readable, non-empty .safetensors file
    vae              "fp16-fix" or a folder holding config.json and diffusion_pytorch_model.safetensors
    sampler          line 5's solver: "ddim", "euler" or "dpm++2m" (SAMPLERS), or None for the variant's own
                     (ddim; euler for official-sdxl). The paper's variant takes all three; each official
                     variant only its script's (VARIANT_SAMPLERS in blend.algorithm)
    A path is refused by the part at fault: a folder given for a file or a file for a folder, a path
    under a file (naming that file), a missing, unreadable or empty file (path_problem).

What needs the network (is a preset's Hub repository reachable, are the files cached?) or the
weights (does the file hold a model?) is left to the loader.

The methods (`--method`, METHODS): the latent methods (LATENT_METHODS) "bld", Blended Latent Diffusion (the
default), "sdedit", "repaint", "diffedit" and "inpaint" (blend.editor), and the two pixel-space methods of
Blended Diffusion (Avrahami et al., CVPR 2022), "blended-diffusion" (its Algorithm 2) and "local-clip" (its
Algorithm 1, Local CLIP-guided diffusion). Each takes its own options (METHOD_OPTIONS); one given to a method
that does not take it is refused by `method_problem`, naming the method that does. The latent methods share
steps, guidance, sampler, rank, size and mask-from; start, variant, shrink, reconstruction and vae are bld's.
Their own ranges (`option_problem` with `method`):

    strength         sdedit, inpaint: in (0, 1] with ⌊steps·strength⌋ ≥ 1 steps run (None: 0.4 for sdedit,
                     SDEdit's t0 = 400 of 1000; 1 for inpaint, from pure noise)
    jump_length      repaint: 1 or more (10); jump_n_sample likewise (10; 1 is no resampling)
    encode_ratio     diffedit: in (0, 1] with ⌊steps·ratio⌋ ≥ 1 steps inverted (0.8)
    mask_from        every latent method: a reference text ("" for the unconditional model), with steps ≥ 2
                     (the mask is estimated at ⌊steps/2⌋'s noise)
    sampler          sdedit and inpaint: ddim, euler or dpm++2m; diffedit: ddim (it inverts with DDIM)
    steps            repaint: 1 … 1000, its timesteps i·(T // N) have no offset
    model            inpaint: an inpainting model (INPAINTING_MODEL_NAMES, or a checkpoint whose UNet takes 9
                     channels: told once it is loaded, `inpainting_problem`); every other method: not one

The pixel methods' ranges (`pixel_option_problem`):

    skip_timesteps       0 … N − 1 of the N respaced steps (25 of 100 by default: 75 run)
    respacing            GD's section string, "100" (default), "ddim50" or "10,20", of the 1000 training steps
    clip_guidance_scale  finite, at least 0 (1000 by default); range_scale likewise (50)
    num_views            1 or more (8: one plain view and seven warped)
    background_loss      local-clip only (LPIPS·1000 + MSE·10000 outside the mask)
    model                adm-256-uncond (default), toy, or a .pt / .pth / .safetensors file of ADM's weights
"""
import json
import math
import numbers
import os
import warnings
from pathlib import Path

import torch

from clip import CLIP_NAMES
from samplers import DDIMSampler, DPMSolverSampler, EulerSampler, ddim_timesteps
from samplers.gaussian_diffusion import space_timesteps
from weights import MODEL_NAMES, spec_of
from weights.load import VAE_FILES
from weights.pickle_checkpoint import PICKLE_SUFFIXES

from .algorithm import VARIANT_SAMPLERS, VARIANTS
from .inpaint import DEFAULT_STRENGTH as INPAINT_STRENGTH
from .inpaint import INPAINTING_PRESETS
from .reconstruction import MODES
from .sdedit import DEFAULT_STRENGTH as SDEDIT_STRENGTH

NUM_TRAIN_TIMESTEPS = 1000      # every model here: SD 1.x/2.x, tiny and the toy
PUBLISHED_STEPS_OFFSET = 1      # the published SD scheduler configs; the official SD2 script uses 0
CHECKPOINT_SIZE_MULTIPLE = 64   # SD 1.x/2.x: the autoencoder divides by 8, then the UNet by 8
LARGE_SIZE = 2048
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
CLI_FLAGS = {"num_samples": "--samples", "guidance_scale": "--guidance", "clip_guidance_scale": "--clip-guidance",
             "range_scale": "--range-loss", "num_views": "--views"}
MODEL_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# --sampler's names: line 5 of Algorithm 1 as DDIM (η = 0), Karras' Euler, or DPM-Solver++(2M)
SAMPLERS = {"ddim": DDIMSampler, "euler": EulerSampler, "dpm++2m": DPMSolverSampler}
# The steps each sampler runs when none are given (--steps, steps=None). DDIM's 50 are the paper's and the official
# scripts', Euler keeps them; DPM-Solver++(2M) matches DDIM-50's error at 30 steps on the exact toy model
# (benchmarks/README.md, "Samplers against the exact solution": RMS 2.8e-5 and max 1.6e-3 against 4.7e-5 and 2.0e-3).
DEFAULT_STEPS = {"ddim": 50, "euler": 50, "dpm++2m": 30}
REPAINT_STEPS = 50   # RePaint's N, whatever the sampler: its jump schedule (jump length 10, 10 passes) assumes it
# The --sampler names each of the new latent methods runs, its own first (bld's depend on its variant: samplers_of;
# RePaint takes none: its jump schedule has its own DDIM steps and undo steps; DiffEdit inverts with DDIM)
METHOD_SAMPLERS = {"sdedit": tuple(SAMPLERS), "diffedit": ("ddim",), "inpaint": tuple(SAMPLERS)}
# The latent methods run on the latent models (SD, the LDM, the toy) and share their options (steps, guidance, sampler,
# rank, size, --mask-from); the pixel methods run on a pixel model (OpenAI's ADM, the toy).
LATENT_METHODS = ("bld", "sdedit", "repaint", "diffedit", "inpaint")
PIXEL_METHODS = ("blended-diffusion", "local-clip")
METHODS = (*LATENT_METHODS, *PIXEL_METHODS)
INPAINTING_MODEL_NAMES = INPAINTING_PRESETS   # 9-channel UNets: --method inpaint's
DEFAULT_MODELS = {"bld": "sd-2.1-base", "sdedit": "sd-2.1-base", "repaint": "sd-2.1-base", "diffedit": "sd-2.1-base",
                  "inpaint": "sd-2-inpainting", "blended-diffusion": "adm-256-uncond", "local-clip": "adm-256-uncond"}
PIXEL_MODEL_NAMES = ("adm-256-uncond", "toy")   # the toy, last, serves every method but inpaint
PIXEL_MODEL_SUFFIXES = (".pt", ".pth", ".safetensors")
# Each method's own defaults, where the methods differ: SDEdit's strength t0 (blend.sdedit.DEFAULT_STRENGTH) and
# the inpainting pipelines' strength 1 (from pure noise: the network sees the masked image itself).
DEFAULT_STRENGTH = {"sdedit": SDEDIT_STRENGTH, "inpaint": INPAINT_STRENGTH}
_ELSEWHERE = {"blended-diffusion": "{method} skips whole respaced steps: see {skip-timesteps}",
              "local-clip": "{method} skips whole respaced steps: see {skip-timesteps}",
              "bld": "{method} skips a fraction of its steps: see {start}",
              "sdedit": "{method} noises the source part way: see {strength}",
              "inpaint": "{method} noises the source part way: see {strength}",
              "repaint": "{method} starts from pure noise and runs every step",
              "diffedit": "{method} inverts the source with DDIM part way: see {encode-ratio}"}
# The options that only some methods take, by their flag's name: (the methods that take it, what it is, what a
# method that does not take it does instead: one sentence, or one per method, "*" for the rest). In the last,
# {method} is the method chosen and {name} a flag, spelled as the caller spells flags. Every other option (image,
# mask, prompt, model, samples, seed, device, dtype, out, allow-pickle) serves every method.
METHOD_OPTIONS = {
    "steps": (LATENT_METHODS, "the sampler's steps",
              "{method} runs the pixel model's respaced schedule: see {respacing} and {skip-timesteps}"),
    "guidance": (LATENT_METHODS, "classifier-free guidance", "{method} is steered by CLIP: see {clip-guidance}"),
    "start": (("bld",), "the fraction of the steps skipped", _ELSEWHERE),
    "variant": (("bld",), "Algorithm 1 as the paper intends it, or an official script's loop",
                {"*": "{method} runs its own paper's loop",
                 "blended-diffusion": "{method} runs the official Blended Diffusion script's loop",
                 "local-clip": "{method} runs the official Blended Diffusion script's loop"}),
    "sampler": (("bld", "sdedit", "diffedit", "inpaint"), "line 5's solver",
                {"*": "{method} takes DDPM steps, or DDIM steps with {ddim}",
                 "repaint": "{method} runs its jump schedule with DDIM steps (η = 0) and undo steps"}),
    "shrink": (("bld",), "progressive mask shrinking, §4.3",
               {"*": "{method} works with the mask itself", "sdedit": "{method} uses no mask"}),
    "reconstruction": (("bld",), "background reconstruction, §4.2",
                       {"*": "{method} decodes the whole latent, as its paper",
                        "blended-diffusion": "{method} works in pixels and pastes the source's background itself",
                        "local-clip": "{method} keeps the background only through {background-loss}"}),
    "vae": (("bld",), "a replacement autoencoder",
            {"*": "{method} decodes with the model's own autoencoder",
             "blended-diffusion": "{method} works in pixels, with no autoencoder",
             "local-clip": "{method} works in pixels, with no autoencoder"}),
    "rank": (LATENT_METHODS, "ranking by CLIP, §4.4",
             "{method} always ranks its results, best first, by its own CLIP distance (ranking.txt)"),
    "size": (LATENT_METHODS, "the working size",
             "{method} works at its model's own size: 256x256 for adm-256-uncond, as the official script"),
    "strength": (("sdedit", "inpaint"), "how far the source is noised: the fraction t0 of the steps run",
                 _ELSEWHERE),
    "jump-length": (("repaint",), "the steps of each jump back, RePaint's resampling", "{method} does not resample"),
    "jump-n-sample": (("repaint",), "how many times each stretch is sampled, RePaint's r",
                      "{method} does not resample"),
    "encode-ratio": (("diffedit",), "the fraction of the steps inverted with DDIM", _ELSEWHERE),
    "mask-from": (LATENT_METHODS, "a mask estimated from the prompt against a reference text, DiffEdit's step 1",
                  "{method}'s pixel model is unconditional and cannot compare two texts: paint the mask, or use "
                  "the mask-from.png that a latent method's run with {mask-from} writes"),
    "skip-timesteps": (PIXEL_METHODS, "the respaced steps skipped", _ELSEWHERE),
    "respacing": (PIXEL_METHODS, "the pixel model's respaced schedule", "{method} chooses its steps with {steps}"),
    "clip-guidance": (PIXEL_METHODS, "the CLIP guidance scale",
                      "{method} is steered by classifier-free guidance: see {guidance}"),
    "range-loss": (PIXEL_METHODS, "the weight of the range loss on x̂0, beside the CLIP loss",
                   "{method} has no CLIP loss"),
    "views": (PIXEL_METHODS, "the CLIP loss's views, one plain and the others warped", "{method} has no CLIP loss"),
    "ddim": (PIXEL_METHODS, "DDIM steps instead of DDPM steps",
             {"*": "{method} chooses its solver with {sampler}",
              "repaint": "{method} runs its jump schedule with DDIM steps"}),
    "background-loss": (("local-clip",), "LPIPS·1000 + MSE·10000 outside the mask",
                        {"bld": "{method} keeps the background by blending: see {reconstruction} for §4.2",
                         "blended-diffusion": "{method} replaces the background at every step, so it needs no loss "
                                              "there",
                         "repaint": "{method} replaces the known region at every step, so it needs no loss there",
                         "diffedit": "{method} replaces the background with its DDIM-inverted latents at every step",
                         "inpaint": "{method}'s network sees the masked image and keeps the background itself",
                         "sdedit": "{method} regenerates the whole image from the noised source"}),
}
OFFICIAL_LOOPS = {"official": "the official SD 2 script's loop with its DDIM scheduler",
                  "official-ldm": "the official LDM script's loop with CompVis's DDIM",
                  "official-sdxl": "the official SDXL script's loop with its Euler scheduler"}


def samplers_of(variant: str) -> tuple:
    """The --sampler names that `variant` runs, its own (the default) first."""
    return tuple(name for name, kind in SAMPLERS.items() if kind in VARIANT_SAMPLERS.get(variant, ()))


def default_sampler(variant: str) -> str:
    """The sampler a variant runs when none is named: DDIM, or Euler for the official SDXL loop."""
    return samplers_of(variant)[0]


def default_steps(method: str = "bld", sampler: str | None = None, variant: str = "paper") -> int:
    """The steps a latent method runs when none are given: those of the sampler it runs (DEFAULT_STEPS), the one named
    or else its own (bld's variant's, DDIM for the others); RePaint's REPAINT_STEPS."""
    if method == "repaint":
        return REPAINT_STEPS
    if sampler is None:
        sampler = default_sampler(variant) if method == "bld" else METHOD_SAMPLERS[method][0]
    return DEFAULT_STEPS[sampler]


def _namer(cli: bool, manifest: bool):
    """named(option, value): "--steps 1001" for the CLI, '"steps": 1001' for a manifest line of python -m
    blend.batch (its keys are the flags' names), "steps=1001" for Python."""
    def named(option: str, value) -> str:
        flag = CLI_FLAGS.get(option, '--' + option.replace('_', '-'))
        if manifest:
            return f"{json.dumps(flag[2:])}: {json.dumps(value, default=str)}"
        if cli:
            return f"{flag} {value}"
        return f"{option}={value!r}"
    return named


def method_problem(method, given, *, cli: bool = False, manifest: bool = False, python: bool = False) -> str | None:
    """Why `method` cannot be run with the options `given` (their flags' names, e.g. {"guidance"}), or None.

    An option that the method does not take is refused, naming the method that takes it (METHOD_OPTIONS):
    "--guidance is an option of --method bld (classifier-free guidance); blended-diffusion is steered by CLIP:
    see --clip-guidance". Flags are spelled as the command line's, a manifest's ("guidance") or, with python=True,
    as blend.edit's keywords ("guidance_scale is an option of method='bld' (…)").
    """
    named = _namer(cli, manifest)
    if method not in METHODS:
        return f"{named('method', method)}: expected one of {', '.join(METHODS)}"
    keywords = {flag[2:]: option for option, flag in CLI_FLAGS.items()}

    def flag(name: str) -> str:
        if python:
            return keywords.get(name, name.replace("-", "_"))
        return json.dumps(name) if manifest else f"--{name}"

    for option, (methods, what, instead) in METHOD_OPTIONS.items():
        if option in given and method not in methods:
            names = [json.dumps(name) if manifest else repr(name) if python else name for name in methods]
            takes = f"{flag('method')}{':' if manifest else '=' if python else ''} " + either(names)
            if python:
                takes = takes.replace("= ", "=")
            instead = instead.get(method, instead.get("*")) if isinstance(instead, dict) else instead
            return (f"{flag(option)} is an option of {takes} ({what}); "
                    + instead.format(method=method, **{name: flag(name) for name in METHOD_OPTIONS}))
    return None


def either(names: list) -> str:
    """"a", "a or b", "a, b or c"."""
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def pixel_model_problem(model, *, cli: bool = False, manifest: bool = False) -> str | None:
    """Why `model` cannot serve the pixel methods, or None: a pixel model name or an ADM weights file is expected.
    (A manifest names no model: there, --model is the command line's.)"""
    named = _namer(cli or manifest, False)
    if not isinstance(model, (str, Path)) or (isinstance(model, str) and model in PIXEL_MODEL_NAMES):
        return None  # a name it runs, or components already loaded
    method = "--method" if cli or manifest else "method="
    if isinstance(model, str) and model in MODEL_NAMES:
        return (f"{named('model', model)}: a latent diffusion model, which {method} bld runs; Blended Diffusion "
                f"runs a pixel diffusion model: adm-256-uncond (OpenAI's 256x256 unconditional ADM, the official "
                f"script's; the default), toy (offline) or a {'/'.join(PIXEL_MODEL_SUFFIXES)} file of ADM's weights")
    problem = path_problem(model, "file", suffixes=PIXEL_MODEL_SUFFIXES) if str(model).strip() else "it is empty"
    if problem:
        return (f"{named('model', str(model))}: neither a pixel model name ({', '.join(PIXEL_MODEL_NAMES)}) nor a "
                f"readable {'/'.join(PIXEL_MODEL_SUFFIXES)} file of ADM's weights ({problem})")
    return None


def pixel_option_problem(*, method="blended-diffusion", model="adm-256-uncond", num_samples=4, seed=42,
                         skip_timesteps=25, respacing="100", clip_guidance_scale=1000.0, range_scale=50.0,
                         num_views=8, background_loss=False, ddim=False, device=None, cli=False,
                         manifest=False) -> str | None:
    """The first option of a pixel method out of its range (module docstring), as one sentence, or None."""
    named = _namer(cli, manifest)
    if method not in PIXEL_METHODS:
        return f"{named('method', method)}: expected one of {', '.join(PIXEL_METHODS)}"
    for option, value, low in (("num_samples", num_samples, 1), ("seed", seed, 0), ("num_views", num_views, 1),
                               ("skip_timesteps", skip_timesteps, 0)):
        problem = _whole_number_problem(named, option, value, low)
        if problem:
            return problem
    try:
        num_steps = len(space_timesteps(NUM_TRAIN_TIMESTEPS, respacing))
    except (ValueError, TypeError, AttributeError) as error:
        num_steps, reason = 0, str(error)
    else:
        reason = "no step"
    if num_steps == 0:
        return (f"{named('respacing', respacing)}: expected how many of the {NUM_TRAIN_TIMESTEPS} training steps "
                f"to keep, in GD's notation: 100 (the official script's), ddim50 or 10,20 ({reason})")
    if skip_timesteps >= num_steps:
        return (f"{named('skip_timesteps', skip_timesteps)}: expected fewer than the {num_steps} steps of "
                f"{named('respacing', respacing)}, so that at least one runs (the official script skips 25 of 100)")
    for option, value in (("clip_guidance_scale", clip_guidance_scale), ("range_scale", range_scale)):
        if not _is_real(value) or not math.isfinite(value) or value < 0:
            return f"{named(option, value)}: expected a loss weight, a finite number of at least 0 (0 turns it off)"
    for option, value in (("background_loss", background_loss), ("ddim", ddim)):
        if not isinstance(value, bool):
            return f"{named(option, value)}: expected {'true or false' if manifest else 'True or False'}"
    if background_loss and method != "local-clip":
        return method_problem(method, {"background-loss"}, cli=cli, manifest=manifest)
    problem = device_problem(device, instead="--device cpu" if cli else "device='cpu'")
    if problem:
        return f"{named('device', device)}: {problem}"
    return pixel_model_problem(model, cli=cli, manifest=manifest)


def option_problem(*, steps=None, start=0.25, guidance_scale=None, num_samples=1, seed=42, size=None, device=None,
                   variant="paper", reconstruction="none", model="toy", rank=None, cli=False,
                   manifest=False, vae=None, sampler=None, method="bld", strength=None, jump_length=10,
                   jump_n_sample=10, encode_ratio=0.8, mask_from=None) -> str | None:
    """The first option of a latent method out of its range, as one sentence naming the option as the caller
    spelled it. (Which options a method takes at all is `method_problem`'s: give the others their defaults.)
    steps None is the sampler's default (default_steps), checked as if given."""
    named = _namer(cli, manifest)
    if method not in LATENT_METHODS:
        return (f"{named('method', method)}: expected one of the latent methods {', '.join(LATENT_METHODS)} "
                f"(the pixel methods' options are checked by pixel_option_problem)")
    if variant not in VARIANTS:
        return f"{named('variant', variant)}: expected one of {', '.join(VARIANTS)}"
    if isinstance(model, str) and model in PIXEL_MODEL_NAMES and model != "toy":
        return (f"{named('model', model)}: a pixel diffusion model (OpenAI's ADM), which Blended Diffusion runs "
                f"({'--method blended-diffusion or local-clip' if cli or manifest else 'blend.pixel_editor'}); "
                f"{'Blended Latent Diffusion' if method == 'bld' else method} runs a latent model: "
                f"{', '.join(name for name in MODEL_NAMES if name not in PIXEL_MODEL_NAMES[:-1])}, a .safetensors "
                f"file or a diffusers folder")
    if reconstruction not in MODES:
        return f"{named('reconstruction', reconstruction)}: reconstruction must be one of {MODES}"
    if sampler is not None and (not isinstance(sampler, str) or sampler not in SAMPLERS):
        return f"{named('sampler', sampler)}: expected one of {', '.join(SAMPLERS)}"
    if sampler is not None and method != "bld" and sampler not in METHOD_SAMPLERS.get(method, ()):
        return (f"{named('sampler', sampler)}: {method} runs {either(list(METHOD_SAMPLERS.get(method, ())))} only "
                f"(DiffEdit inverts and decodes with DDIM, as its paper); leave it out")
    if sampler is not None and method == "bld" and sampler not in samplers_of(variant):
        own = samplers_of(variant)[0]
        return (f"{named('sampler', sampler)}: {named('variant', variant)} reproduces {OFFICIAL_LOOPS[variant]} and "
                f"runs only {named('sampler', own)}; choose {named('sampler', own)}, or "
                f"{named('variant', 'paper')} (Algorithm 1 as the paper intends it) for {sampler}")
    if variant == "official-sdxl" and isinstance(model, str) and model in MODEL_NAMES \
            and getattr(spec_of(model), "text_2", None) is None:
        return (f"{named('variant', variant)}: the official SDXL script's loop needs an SDXL model "
                f"({'--model' if cli else 'model='} sdxl-base-1.0 or an SDXL file), not {model!r}")
    if isinstance(vae, (str, Path)) and vae != "fp16-fix":
        problem = path_problem(vae, "folder") or folder_files_problem(Path(vae).expanduser(), VAE_FILES)
        if problem:
            return (f"{named('vae', vae)}: {problem}; expected 'fp16-fix' (madebyollin/sdxl-vae-fp16-fix) or a "
                    f"diffusers vae/ folder ({' + '.join(VAE_FILES)})")
    if steps is None:
        steps = default_steps(method, sampler, variant)
    for option, value, low in (("steps", steps, 1), ("num_samples", num_samples, 1), ("seed", seed, 0)):
        problem = _whole_number_problem(named, option, value, low)
        if problem:
            return problem
    offset = 0 if variant == "official" or method == "repaint" else _steps_offset(model)  # RePaint's: i·(T // N)
    spacing = "leading" if method == "repaint" else _spec_value(model, "timestep_spacing", "leading")
    try:
        ddim_timesteps(NUM_TRAIN_TIMESTEPS, steps, spacing, offset)
    except ValueError as error:
        allowed = NUM_TRAIN_TIMESTEPS - (1 if offset else 0)
        if spacing == "uniform":  # CompVis's: T // S must be at least 2
            allowed = NUM_TRAIN_TIMESTEPS // 2
        official = "--variant official" if cli else "variant='official'"
        return (f"{named('steps', steps)}: expected 1 … {allowed} steps with timestep offset {offset} ({error})"
                + (f"; {official} (offset 0) allows {NUM_TRAIN_TIMESTEPS}" if offset and method == "bld" else ""))
    if not _is_real(start) or not math.isfinite(start) or not 0 <= start < 1:
        return (f"{named('start', start)}: expected the fraction of the {steps} steps to skip, a number in "
                f"[0, 1) (0.25 skips a quarter)")
    if guidance_scale is not None and (not _is_real(guidance_scale) or not math.isfinite(guidance_scale)):
        return (f"{named('guidance_scale', guidance_scale)}: expected a finite number (7.5 is the official "
                f"scale, 1 means no guidance); a non-finite scale turns every latent into NaN")
    if size is not None:
        multiple = size_multiple_of(model)
        if not _is_integer(size) or size < max(multiple, 1):
            return (f"{named('size', size)}: expected a whole number of pixels of at least {multiple} "
                    f"(the sides of the {model if isinstance(model, str) else 'given'} model's working image are "
                    f"multiples of {multiple}); leave it out for the model's own size")
    problem = device_problem(device, instead="--device cpu" if cli else "device='cpu'")
    if problem:
        return f"{named('device', device)}: {problem}"
    if isinstance(model, (str, Path)) and not _is_known_model(model):
        under = _file_above(Path(model).expanduser()) if str(model).strip() else None
        found = (f"{under} is a file, so nothing can be under it" if under else
                 f"looked for {Path(model).expanduser().resolve()}")
        return (f"{named('model', model)}: neither a model name ({', '.join(MODEL_NAMES)}) nor an "
                f"existing file or folder ({found}); give one of those names, a .safetensors file or a diffusers "
                f"folder")
    if isinstance(model, (str, Path)) and not (isinstance(model, str) and model in MODEL_NAMES):
        problem = path_problem(model, "either", suffixes=MODEL_FILE_SUFFIXES)
        if problem:
            return (f"{named('model', model)}: {problem}; expected a .safetensors checkpoint, a diffusers folder, or "
                    f"(with {'--allow-pickle' if cli else 'allow_pickle'}) a {'/'.join(PICKLE_SUFFIXES)} file")
    if rank is not None and not (isinstance(rank, str) and rank in CLIP_NAMES):
        problem = path_problem(rank, "file", suffixes=(".safetensors",))
        if problem:
            return (f"{named('rank', rank)}: neither a CLIP model name ({', '.join(CLIP_NAMES)}) nor a readable "
                    f".safetensors file: {problem}; give one of those names or a transformers CLIPModel "
                    f"model.safetensors")
    return (method_range_problem(method, steps, strength, jump_length, jump_n_sample, encode_ratio, mask_from, named)
            or inpainting_problem(method, model, cli=cli, manifest=manifest))


def method_range_problem(method, steps, strength, jump_length, jump_n_sample, encode_ratio, mask_from,
                         named) -> str | None:
    """The new latent methods' own options out of range (module docstring), or None."""
    fractions = [("strength", strength, "the fraction t0 of the steps run from the noised source (SDEdit's "
                  "t0; 1 starts from pure noise)")] if strength is not None else []
    if method == "diffedit":
        fractions.append(("encode_ratio", encode_ratio, "the fraction of the steps inverted with DDIM (DiffEdit's r)"))
    for option, value, what in fractions:
        if not _is_real(value) or not math.isfinite(value) or not 0 < value <= 1 or int(steps * value) < 1:
            return (f"{named(option, value)}: expected {what}, a number in (0, 1] that runs at least one of the "
                    f"{named('steps', steps)}: at least {1 / steps:.3g}")
    for option, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        problem = _whole_number_problem(named, option, value, 1)
        if problem:
            return problem + (" (1 samples each stretch once: no resampling)" if option == "jump_n_sample" else "")
    if mask_from is not None and not isinstance(mask_from, str):
        return f"{named('mask_from', mask_from)}: expected a reference text (\"\" for the unconditional model)"
    if mask_from is not None and steps < 2:
        return (f"{named('steps', steps)}: {named('mask_from', mask_from)} estimates the mask at half the steps' "
                f"noise (DiffEdit's strength 50 %), which needs at least 2 steps")
    return None


def inpainting_problem(method, model, *, cli: bool = False, manifest: bool = False, shown=None) -> str | None:
    """Why `model` cannot run `method` for being (or not being) an inpainting model, or None where the name cannot
    tell: a checkpoint file or folder is checked once loaded (`blend.editor`), loaded components at once. `shown`:
    how to name loaded components (the command line's --model), else their spec's name."""
    named = _namer(cli, manifest)
    if isinstance(model, str) and model in MODEL_NAMES:
        inpainting, shown = model in INPAINTING_MODEL_NAMES, model
    elif not isinstance(model, (str, Path)):
        inpainting = is_inpainting_model(model)
        shown = shown or getattr(getattr(model, "spec", None), "name", "the given")
    else:
        return None

    def run(name: str) -> str:
        return f"--method {name}" if cli else f'"method": "{name}"' if manifest else f"method={name!r}"
    if method == "inpaint" and not inpainting:
        return (f"{named('model', shown)}: {run('inpaint')} needs an inpainting model, whose UNet takes the mask and "
                f"the masked image's latent as 5 more input channels (9 in all); {shown} is a text-to-image model"
                + (" (the toy has no extra input channels)" if shown == "toy" else "")
                + f". Use {either(list(INPAINTING_MODEL_NAMES))} or such a checkpoint, or another method (bld, "
                  f"sdedit, repaint, diffedit) with {shown}")
    if method != "inpaint" and inpainting:
        return (f"{named('model', shown)}: an inpainting model (its UNet takes the mask and the masked image as 5 "
                f"more input channels), which only {run('inpaint')} runs; {method} runs a text-to-image model "
                f"({DEFAULT_MODELS[method]} by default). Use {run('inpaint')}, or a text-to-image model")
    return None


def is_inpainting_model(components) -> bool:
    """Whether loaded components hold an inpainting UNet: more input channels than it predicts (9 against 4)."""
    config = getattr(components.unet, "config", None)
    return getattr(config, "in_channels", None) is not None and config.in_channels != config.out_channels


def _whole_number_problem(named, option: str, value, low: int) -> str | None:
    """Why `value` is not a whole number of at least `low` (a seed also at most 2**64 − 1), or None."""
    if not _is_integer(value):
        return f"{named(option, value)}: expected a whole number"
    if value < low:
        return f"{named(option, value)}: expected at least {low}" + (
            f" (torch would silently run seed {value} as 2**64 - {-value}); use a seed in 0 … 2**64 - 1"
            if option == "seed" else "")
    if option == "seed" and value > 2**64 - 1:
        return (f"{named('seed', value)}: expected at most 2**64 - 1 = {2**64 - 1}, the largest seed "
                f"torch.Generator takes")
    return None


def path_problem(path, kind: str, suffixes: tuple = ()) -> str | None:
    """Why `path` cannot be read as a `kind` ("file", "folder" or "either"; a file ending in one of `suffixes`
    when given), in words that name the path at fault; None when it can (without reading more than a byte)."""
    path = Path(path).expanduser()
    if not path.exists():
        above = _file_above(path)
        if above is not None:
            return f"{above} is a file, so {path} cannot be under it"
        return f"{path} does not exist (looked for {path.resolve()})"
    if path.is_dir():
        if kind == "file":
            return f"{path} is a folder, not a file"
        try:
            next(os.scandir(path), None)
        except OSError as error:
            return f"the folder {path} cannot be read ({error.strerror or error})"
        return None
    if kind == "folder":
        return f"{path} is a file, not a folder"
    if suffixes and path.suffix not in suffixes:
        found = f"a {path.suffix} file" if path.suffix else "a file without a suffix"
        return f"{path} is {found}, not a {' or '.join(suffixes)} file"
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            empty = not os.read(descriptor, 1)
        finally:
            os.close(descriptor)
    except OSError as error:
        return f"{path} cannot be read ({error.strerror or error}); check its permissions"
    if empty:
        return (f"{path} is empty (0 bytes), perhaps cut short by an interrupted download or copy; download or "
                f"copy it again")
    return None


def folder_files_problem(folder: Path, names: tuple) -> str | None:
    """Which of the files `names` the folder `folder` lacks (or holds as something else), or None."""
    for name in names:
        problem = path_problem(folder / name, "file")
        if problem:
            return problem
    return None


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of a missing `path` when it is a file (so `path` cannot exist), else None."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def device_problem(device, instead: str = "device='cpu'") -> str | None:
    """Why `device` cannot run the edit on this machine, or None (None also for device=None: the default)."""
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"not a device name; expected {', '.join(DEVICE_TYPES)} or cuda:N"
    if parsed.type not in DEVICE_TYPES:
        return f"a {parsed.type!r} device cannot run the edit; use {', '.join(DEVICE_TYPES)} or cuda:N"
    if parsed.type == "cpu":
        return None
    if parsed.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, parsed.type)
        available = backend.is_available()
        count = backend.device_count() if available else 0
    name = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU"}[parsed.type]
    if not available:
        return f"{name} is not available on this machine (torch {torch.__version__}); use {instead}"
    if parsed.index is not None and parsed.index >= count:
        return (f"this machine has {count} {name} device(s) ({parsed.type}:0 … {parsed.type}:{count - 1}); "
                f"use one of those")
    return None


def warn_if_large(size) -> None:
    if size is not None and size > LARGE_SIZE:
        warnings.warn(f"size {size} is above {LARGE_SIZE} pixels: memory and time grow quickly with the working "
                      f"size, and SD was trained at 512 or 768", stacklevel=3)


def size_multiple_of(model) -> int:
    """What each side of the working image must divide by, for a model name or loaded components."""
    if not isinstance(model, (str, Path)):
        return model.spec.size_multiple
    if model in MODEL_NAMES:
        return spec_of(model).size_multiple
    return CHECKPOINT_SIZE_MULTIPLE


def _steps_offset(model) -> int:
    return _spec_value(model, "steps_offset", PUBLISHED_STEPS_OFFSET)


def _spec_value(model, name: str, default):
    """A field of the model's spec (loaded components, or a model name), else `default` (a file: SD's)."""
    spec = getattr(model, "spec", None)
    if spec is None and isinstance(model, str) and model in MODEL_NAMES:
        spec = spec_of(model)
    return getattr(spec, name, default)


def _is_known_model(model) -> bool:
    if not str(model).strip():
        return False                      # "" would be the current folder
    return (isinstance(model, str) and model in MODEL_NAMES) or Path(model).expanduser().exists()


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
