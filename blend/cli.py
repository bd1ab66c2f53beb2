"""`python -m blend`: edit a photograph from the command line.

    python -m blend                       # the shipped example with SD 2.1-base (downloads ~5 GB once)
    python -m blend --model toy           # the same example, offline, with the exact toy model (seconds)
    python -m blend --image photo.jpg --mask mask.png --prompt "a red ball" --samples 2
    python -m blend --method blended-diffusion       # Blended Diffusion on OpenAI's 256x256 ADM (2.2 GB once)
    python -m blend --method local-clip --background-loss --model toy   # its Algorithm 1, offline
    python -m blend --method sdedit --strength 0.6 --model toy        # SDEdit: no mask needed
    python -m blend --method diffedit --mask-from "coffee" --model toy  # DiffEdit, the mask from two texts
    python -m blend --method inpaint                  # the SD 2 inpainting checkpoint (downloads ~5 GB once)
    python -m blend --mask-from "a cup" --image photo.jpg --prompt "a cat"   # BLD with an estimated mask

--method chooses the algorithm. The latent methods run on the same latent model, sampler, steps,
guidance, seed and working size:
    bld        Blended Latent Diffusion (the default): Algorithm 1, the background blended in at every step
    sdedit     SDEdit (Meng et al. 2022): the whole image noised to --strength and denoised; no mask
    repaint    RePaint on latents (Lugmayr et al. 2022): the known region noised to each step's level,
               each stretch of --jump-length steps sampled --jump-n-sample times (about 8x bld's cost;
               printed before the run)
    diffedit   DiffEdit (Couairon et al. 2023): DDIM inversion to --encode-ratio with the empty prompt,
               then decoding with the inverted latents as the background
    inpaint    an inpainting checkpoint (sd-2-inpainting, the default, or sd-1.5-inpainting): a UNet that
               reads the mask and the masked image as extra input channels
The pixel methods are Blended Diffusion's (Avrahami et al. 2022), which the paper compares against, in
pixel space with CLIP guidance: blended-diffusion (its Algorithm 2) and local-clip (its Algorithm 1,
Local CLIP-guided diffusion). Their defaults are the official script's: adm-256-uncond at 256x256, 4
samples, 25 of 100 respaced steps skipped, CLIP guidance 1000, range loss 50, 8 views; their results are
always ranked by their CLIP distance.
Each method takes its own options (the groups below); an option given to a method that does not take
it is refused, naming the method that does.

--mask-from TEXT replaces --mask for every latent method: the mask is DiffEdit's step 1, where the
prompt and TEXT (what the region shows now; "" for the unconditional model) predict different noise
on ten noised copies of the photograph, thresholded at 1.5x the mean difference. It is written beside
the results as mask-from.png, and shown in grid.png.

Each run writes its results and grid.png (input | mask | results) to a new folder, which it prints;
an existing folder or file is never written into. The folder is whole or absent: the results are
written into a hidden folder beside it, which is renamed when they are all written and removed
on any failure or interrupt.

Exit status: 0 done; 2 an option, input or output folder refused, with one line `error: ...`,
before any model is loaded and with nothing written (what only the loaded model can tell, once it is
loaded: a checkpoint file's UNet that does or does not take the inpainting channels, a prompt the
model's tokenizer refuses, an estimated mask that is empty); 1 the weights could not be loaded or the
results could not be written; 130 interrupted (Ctrl-C, SIGTERM or SIGHUP), with nothing left
half-written. A hidden folder left by a run that was killed outright (SIGKILL) is removed by the
next run for the same output name (ResultFolder).
"""
import argparse
import errno
import os
import re
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

try:
    import fcntl  # POSIX: a run's hidden folder is locked while it lives
except ImportError:  # Windows: no locks, and so no removal of a killed run's folder
    fcntl = None

import numpy as np
import torch
from PIL import Image

from weights import OfflineError, PickleRefusedError, load_clip
from weights.load import load_vae
from weights.pickle_checkpoint import conversion_command, is_pickle_checkpoint

from .algorithm import VARIANTS
from .editor import EditInputError, edit, load_model
from .images import mask_to_image, read_image, read_mask
from .options import (
    DEFAULT_MODELS,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    INPAINTING_MODEL_NAMES,
    LARGE_SIZE,
    LATENT_METHODS,
    METHODS,
    PIXEL_MODEL_SUFFIXES,
    REPAINT_STEPS,
    SAMPLERS,
    default_sampler,
    default_steps,
    inpainting_problem,
    method_problem,
    option_problem,
    pixel_option_problem,
)
from .reconstruction import MODES

ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLE_IMAGE = ASSETS / "example.jpg"       # scikit-image's "coffee" photograph, CC0 (assets/SOURCES.md)
EXAMPLE_MASK = ASSETS / "example_mask.png"   # white = the cup, the region to edit
EXAMPLE_PROMPT = "a cat"
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PARTIAL = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.partial")  # ResultFolder's hidden folders
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
MASK_FROM_FILE = "mask-from.png"   # the mask that --mask-from estimated, beside the results
NOT_GIVEN = object()   # what parse_with_given's second parse leaves in an option that the command line does not give


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m blend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=None,
                        help="the photograph to edit, given with --mask or --mask-from (--method sdedit: alone) "
                             "(default: the example and its mask)")
    parser.add_argument("--mask", default=None,
                        help="white (1) = edit, black (0) = keep; given with --image. --method sdedit uses none: a "
                             "mask given is only what --rank and grid.png read")
    parser.add_argument("--prompt", default=EXAMPLE_PROMPT, help=f"what the masked region becomes ({EXAMPLE_PROMPT!r})")
    add_edit_options(parser)
    parser.add_argument("--vae", default=None,
                        help="--method bld: a replacement autoencoder: fp16-fix (SDXL's, decodes in float16 "
                             "without overflow; madebyollin/sdxl-vae-fp16-fix) or a diffusers vae/ folder (default: "
                             "the model's own)")
    parser.add_argument("--seed", type=int, default=42, help="0 to 2**64 - 1, torch's range (default 42)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N, mps or xpu, available on this machine (default: cuda when available)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<image>-<prompt>; "
                                                    "a new name is chosen when it exists)")
    return parse_with_given(parser, argv)


def parse_with_given(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args(argv), with `given`: the flags' names (e.g. "guidance", "skip-timesteps") of the options the
    command line gives, even at their default values; and --model, when not given, the method's (DEFAULT_MODELS).

    A second parse starts from a namespace that holds NOT_GIVEN for every option: argparse sets a default only where
    the namespace has no value, so what is still NOT_GIVEN afterwards was not on the command line.
    """
    args = parser.parse_args(argv)
    marked = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(args), NOT_GIVEN)))
    args.given = frozenset(name.replace("_", "-") for name, value in vars(marked).items() if value is not NOT_GIVEN)
    if args.model is None:
        args.model = DEFAULT_MODELS[args.method]
    return args


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """The edit options that `python -m blend` and `python -m blend.batch` share (method, model, schedule, ranking,
    size, the pixel methods' own); parse them with `parse_with_given`."""
    parser.add_argument("--method", choices=METHODS, default="bld",
                        help="bld: Blended Latent Diffusion (default); sdedit, repaint, diffedit: SDEdit, RePaint "
                             "and DiffEdit on the same latent model; inpaint: an inpainting checkpoint; "
                             "blended-diffusion: Blended Diffusion's Algorithm 2, in pixels with CLIP guidance; "
                             "local-clip: its Algorithm 1, Local CLIP-guided diffusion (no blending)")
    parser.add_argument("--model", default=None,
                        help="for bld, sdedit, repaint and diffedit: sd-2.1-base (default, as the official "
                             "script), sd-1.5, sd-2.1, sdxl-base-1.0 (1024 px, guidance 5; bfloat16 by default on a "
                             "CPU with native bf16), ldm-txt2img-f8-large (the paper's LDM: 256 px, guidance 5, "
                             "5.7 GB), a .safetensors file, a diffusers folder or 'tiny' (random weights). For "
                             f"inpaint: {' (default) or '.join(INPAINTING_MODEL_NAMES)}, or an inpainting checkpoint "
                             "(a 9-channel UNet). For blended-diffusion and local-clip: adm-256-uncond (default: "
                             "OpenAI's 256x256 unconditional ADM, 2.2 GB, with CLIP ViT-B/16) or a "
                             f"{'/'.join(PIXEL_MODEL_SUFFIXES)} file of its weights. 'toy' (offline, exact toy model) "
                             "serves every method but inpaint (it has no extra input channels)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .ckpt/.pt/.bin --model with torch.load(weights_only=True) instead of refusing it")
    parser.add_argument("--samples", type=int, default=4, help="number of results, at least 1 (default 4)")
    parser.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default=None,
                        help="weights' dtype (default: bfloat16 for SD and SDXL on a CPU with native bf16, "
                             "else float32; the run prints which)")
    latent = parser.add_argument_group(
        "the latent methods: bld, sdedit, repaint, diffedit, inpaint",
        "Their shared options, on the same latent model. --sampler: bld (its paper variant), sdedit and inpaint\n"
        "take all three, diffedit ddim only, repaint none (its jump schedule has its own DDIM and undo steps).")
    latent.add_argument("--steps", type=int, default=None,
                        help="the sampler's steps S: 1 to 999 (1 to 1000 with --variant official, whose timestep "
                             "offset is 0; 1 to 500 for the LDM's uniform timesteps; 1 to 1000 for repaint, whose "
                             "N steps have no offset); default: the sampler's, "
                             + ", ".join(f"{steps} for {name}" for name, steps in DEFAULT_STEPS.items())
                             + f" (where DPM-Solver++(2M) matches DDIM-{DEFAULT_STEPS['ddim']}'s error on the exact "
                               f"toy model: benchmarks/README.md, \"Samplers against the exact solution\"), "
                               f"{REPAINT_STEPS} for repaint")
    latent.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale, any finite number (default: the model's, 7.5 for SD, "
                             "5 for SDXL and the LDM, 1.0 for the toy)")
    latent.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                        help="line 5's solver: ddim (DDIM, η = 0), euler (Karras' Euler, the SDXL script's) or "
                             "dpm++2m (DPM-Solver++(2M), second order: fewer steps for the same error); default: "
                             "ddim, or for bld the variant's own (euler for official-sdxl). bld's --variant paper "
                             "takes all three, each official variant only its script's")
    latent.add_argument("--rank", nargs="?", const="ViT-B/16", default=None, metavar="CLIP",
                        help="rank the results by CLIP (paper §4.4), best first, with their distances in "
                             "ranking.txt; CLIP is ViT-B/16 (default, as the official code), ViT-L/14, tiny or a "
                             "model.safetensors")
    latent.add_argument("--size", type=int, default=None,
                        help="working long side in pixels, at least what each side must divide by (64 for SD and "
                             f"the LDM, 32 for SDXL, 16 for tiny, 1 for the toy); a warning above {LARGE_SIZE} "
                             "(default: the model's)")
    latent.add_argument("--mask-from", default=None, metavar="TEXT",
                        help="estimate the mask instead of --mask: where the prompt and TEXT, what the region shows "
                             "now (\"\" for the unconditional model), predict different noise (DiffEdit's step 1); "
                             "written as mask-from.png beside the results")
    bld = parser.add_argument_group("--method bld", "Blended Latent Diffusion's own options")
    bld.add_argument("--start", type=float, default=0.25,
                     help="fraction of the steps skipped, in [0, 1) with at least one step left to run "
                          "(default 0.25)")
    bld.add_argument("--variant", choices=VARIANTS, default="paper",
                        help="Algorithm 1 as the paper intends it (paper), or an official script's loop "
                             "(README: variants); official-sdxl is the SDXL script's (Euler steps; --model "
                             "sdxl-base-1.0), official-ldm the paper's LDM script's (--model ldm-txt2img-f8-large)")
    bld.add_argument("--shrink", action="store_true", help="progressive mask shrinking (paper §4.3)")
    bld.add_argument("--reconstruction", choices=MODES, default="none", help="background reconstruction (§4.2)")
    family = parser.add_argument_group("--method sdedit, repaint, diffedit and inpaint", "Their own options.")
    family.add_argument("--strength", type=float, default=None, metavar="T0",
                        help="sdedit and inpaint: how far the source is noised, the fraction of the steps run, in "
                             f"(0, 1] (default: sdedit {DEFAULT_STRENGTH['sdedit']}, inpaint "
                             f"{DEFAULT_STRENGTH['inpaint']:g}: from pure noise)")
    family.add_argument("--jump-length", type=int, default=10, metavar="J",
                        help="repaint: the steps of each jump back, at least 1 (default 10)")
    family.add_argument("--jump-n-sample", type=int, default=10, metavar="R",
                        help="repaint: how many times each stretch of J steps is sampled, at least 1 (default 10; "
                             "1: no resampling)")
    family.add_argument("--encode-ratio", type=float, default=0.8, metavar="R",
                        help="diffedit: the fraction of the steps inverted with DDIM and decoded, in (0, 1] "
                             "(default 0.8)")
    pixel = parser.add_argument_group(
        "--method blended-diffusion and --method local-clip",
        "Blended Diffusion's options, with the official script's defaults. The results are always ranked,\n"
        "best first, by the CLIP distance of the masked result (ranking.txt).")
    pixel.add_argument("--skip-timesteps", type=int, default=25, metavar="N",
                       help="respaced steps skipped: the edit starts from the source noised to the level of "
                            "the first step it runs, and runs the rest (default 25: 75 of 100 run)")
    pixel.add_argument("--respacing", default="100", metavar="S",
                       help="the respaced schedule: how many of the 1000 training steps are kept, as GD's "
                            "timestep_respacing: 100 (default), ddim50 or 10,20")
    pixel.add_argument("--clip-guidance", type=float, default=1000.0, metavar="W",
                       help="weight of the CLIP loss (the spherical distance of the masked x_in's views to the "
                            "prompt) whose gradient steers each step; at least 0 (default 1000)")
    pixel.add_argument("--range-loss", type=float, default=50.0, metavar="W",
                       help="weight of the range loss, which keeps x̂0 in [-1, 1]; at least 0 (default 50)")
    pixel.add_argument("--views", type=int, default=8, metavar="N",
                       help="views of the CLIP loss: one plain, N - 1 randomly warped (affine and perspective); "
                            "at least 1 (default 8)")
    pixel.add_argument("--ddim", action="store_true",
                       help="DDIM steps (η = 0, the guidance shifting ε) instead of DDPM steps (the mean shifted "
                            "by Σ·g)")
    pixel.add_argument("--background-loss", action="store_true",
                       help="local-clip only: add LPIPS·1000 + MSE·10000 between the source and x_in outside the "
                            "mask (the official --background_preservation_loss; LPIPS-VGG downloads once)")


def main(argv=None) -> int:
    args = parse_args(argv)
    stopped_by = {}  # SIGTERM (kill, a job scheduler) and SIGHUP (the terminal closed) end the run as Ctrl-C does
    if threading.current_thread() is threading.main_thread():
        stopped_by = {number: signal.signal(number, _interrupt) for number in STOP_SIGNALS}
    try:
        with warnings.catch_warnings():  # warnings as plain "warning: ..." lines, for this run only
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
            return run(args)
    except KeyboardInterrupt:  # before the output folder existed: nothing was written
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        for number, previous in stopped_by.items():
            signal.signal(number, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Check the options, the inputs and the output folder; load the model, edit, write (exit status above)."""
    problem = option_refusal(args)
    if problem is None:
        image_path = args.image or EXAMPLE_IMAGE
        mask_path = args.mask if args.image else EXAMPLE_MASK if args.mask_from is None else None
        try:  # the inputs: a bad input fails before any model is loaded
            image = read_image(image_path)
            mask = read_mask(mask_path, image.size) if mask_path else None   # None: estimated, or sdedit's none
        except EditInputError as error:
            problem = str(error)
    if problem is None:
        wanted = Path(args.out) if args.out else Path("outputs") / f"{Path(image_path).stem}-{slug(args.prompt)}"
        try:  # the output location: creating the hidden folder is the check that it can be written
            output = ResultFolder(wanted)
        except OSError as error:
            problem = unwritable_message(wanted, error, given=bool(args.out))
    if problem is None:
        try:
            problem = space_problem(output, result_bytes(image.size, args.samples), given=bool(args.out))
            if problem is None:
                return edit_and_write(args, image, mask, output)
        except KeyboardInterrupt:
            output.discard()
            print(f"interrupted: {f'the results are in {output.final}/' if output.final else 'nothing was written'}",
                  file=sys.stderr)
            return 130
        finally:
            output.discard()  # unless it was renamed into place: a result folder is whole or absent
    print(f"error: {problem}", file=sys.stderr)
    return 2


def option_refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line that can be told without loading anything or the network."""
    if args.mask and args.mask_from is not None:
        return (f"--mask and --mask-from were both given: --mask-from {shlex.quote(args.mask_from)} estimates the "
                f"mask from the prompt against that text, in place of a painted one. Give one of them")
    if args.mask and not args.image or args.image and not args.mask and args.mask_from is None \
            and args.method != "sdedit":
        given, missing = ("--image", "--mask") if args.image else ("--mask", "--image")
        return (f"{given} was given without {missing}: the example's {missing[2:]} does not belong with your "
                f"{given[2:]}. Give both --image PHOTO and --mask MASK (white = edit)"
                + (", or --image PHOTO and --mask-from TEXT (the mask estimated from the prompt against TEXT)"
                   if args.image else "") + ", or neither for the example")
    if args.mask_from is not None and args.mask_from.strip() == args.prompt.strip():
        return (f"--mask-from {shlex.quote(args.mask_from)} is the prompt itself: the mask is where the prompt and "
                f"that text predict different noise, so it would be empty. Give what the region shows now (e.g. "
                f"--mask-from 'a cup'), or --mask-from '' for the unconditional model")
    return command_line_problem(args)


def command_line_problem(args: argparse.Namespace) -> str | None:
    """The edit options' problem (python -m blend's and python -m blend.batch's): first an option that the method
    does not take, then one out of its range, then a pickle --model without --allow-pickle; or None."""
    problem = method_problem(args.method, args.given, cli=True)
    seed, device = getattr(args, "seed", 42), getattr(args, "device", None)   # blend.batch has neither option
    if problem is None and args.method in LATENT_METHODS:
        problem = option_problem(steps=args.steps, start=args.start, guidance_scale=args.guidance,
                                 num_samples=args.samples, seed=seed, size=args.size, device=device,
                                 variant=args.variant, reconstruction=args.reconstruction, model=args.model,
                                 rank=args.rank, cli=True, vae=getattr(args, "vae", None), sampler=args.sampler,
                                 method=args.method, strength=args.strength, jump_length=args.jump_length,
                                 jump_n_sample=args.jump_n_sample, encode_ratio=args.encode_ratio,
                                 mask_from=args.mask_from)
    elif problem is None:
        problem = pixel_option_problem(method=args.method, model=args.model, num_samples=args.samples, seed=seed,
                                       skip_timesteps=args.skip_timesteps, respacing=args.respacing,
                                       clip_guidance_scale=args.clip_guidance, range_scale=args.range_loss,
                                       num_views=args.views, background_loss=args.background_loss, ddim=args.ddim,
                                       device=device, cli=True)
    if problem is None and not args.allow_pickle and is_pickle_checkpoint(Path(args.model).expanduser()):
        problem = pickle_refusal_message(args.model, Path(args.model).expanduser(), method=args.method)
    return problem


def edit_and_write(args: argparse.Namespace, image: Image.Image, mask, output: "ResultFolder") -> int:
    if args.method not in LATENT_METHODS:
        return edit_pixels_and_write(args, image, mask, output)
    if args.model == "tiny":
        print("WARNING: --model tiny has RANDOM weights: its results are NOISE BY DESIGN. It runs the whole\n"
              "path (tokenizer, text encoder, UNet, VAE) offline; for a meaningful offline edit use --model toy.",
              file=sys.stderr)
    if args.model == "toy":
        print("toy model: the exact denoiser of a dozen photographs (weights/toy.py). Expect the "
              + ("whole photograph to move towards\na photograph of the prompt's class." if args.method == "sdedit"
                 else "masked\nregion to become the same region of a photograph of the prompt's class, the rest to "
                      "stay."), file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = load_model(args.model, dtype=DTYPE_NAMES.get(args.dtype), device=device, allow_pickle=args.allow_pickle)
    except Exception as error:  # any failure to get weights ends here, with one clear paragraph (status 1)
        if isinstance(error, PickleRefusedError) and getattr(error, "path", None) is not None:
            print(f"error: {pickle_refusal_message(args.model, error.path)}", file=sys.stderr)  # .bin weights in
            return 2                                                    # a diffusers folder, without --allow-pickle
        print(cannot_load_message(args.model, error), file=sys.stderr)  # incl. what torch.load(weights_only) refused
        return 1
    problem = inpainting_problem(args.method, model, cli=True, shown=args.model)  # a file's UNet, now loaded
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ranker = None
    if args.rank:  # before the edit, so that missing CLIP weights cost no sampling time
        try:
            ranker = load_clip(args.rank)
        except Exception as error:
            print(f"error: could not load the CLIP ranker {args.rank!r}: {error}", file=sys.stderr)
            return 1
    vae = None
    if args.vae:  # before the edit too: a VAE that cannot be fetched costs no sampling time
        try:
            vae = load_vae(args.vae, dtype=next(iter(model.unet.state_dict().values())).dtype, device=device)
        except Exception as error:
            print(f"error: could not load the autoencoder {args.vae!r}: {error}", file=sys.stderr)
            return 1

    if args.method == "repaint":  # its cost, before the run
        steps = default_steps("repaint") if args.steps is None else args.steps
        print(repaint_cost_line(steps, args.jump_length, args.jump_n_sample), file=sys.stderr)
    started = time.perf_counter()
    label = (f"{args.model} {args.variant} {args.sampler or default_sampler(args.variant)}" if args.method == "bld"
             else f"{args.model} {args.method}")
    try:
        results = edit(image, mask, args.prompt, model=model, method=args.method, steps=args.steps,
                       guidance_scale=args.guidance, start=args.start, num_samples=args.samples, seed=args.seed,
                       variant=args.variant, shrink=args.shrink, reconstruction=args.reconstruction, device=device,
                       size=args.size, callback=ProgressLine(label), ranker=ranker, vae=vae, sampler=args.sampler,
                       strength=args.strength, jump_length=args.jump_length, jump_n_sample=args.jump_n_sample,
                       encode_ratio=args.encode_ratio, mask_from=args.mask_from)
    except EditInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return write_and_report(args, image, results_mask(results, mask, image), results, output, args.rank, started)


def repaint_cost_line(steps: int, jump_length: int, jump_n_sample: int) -> str:
    """RePaint's network calls per result (blend.repaint.repaint_network_calls), against one pass of the steps
    and against bld at its default --start 0.25."""
    from .repaint import repaint_network_calls
    calls = repaint_network_calls(steps, jump_length, jump_n_sample)
    return (f"repaint: {calls} network calls per result ({steps} steps, {jump_n_sample} passes over each stretch of "
            f"{jump_length}): {calls / steps:.1f}x the {steps} of one pass; bld makes {steps - int(steps * 0.25)} "
            f"at its default --start 0.25")


def results_mask(results: list, mask, image: Image.Image):
    """The mask to show and save beside the results: the estimated one (--mask-from), the given one, or for SDEdit
    without a mask the whole photograph."""
    if results and "mask" in results[0].info:
        return results[0].info["mask"]
    return mask if mask is not None else np.ones(image.size[::-1], dtype=np.float32)


def edit_pixels_and_write(args: argparse.Namespace, image: Image.Image, mask, output: "ResultFolder") -> int:
    """--method blended-diffusion or local-clip: blend.pixel_editor.edit_pixels, written as a bld run is."""
    from weights import load_pixel_model

    from .pixel_editor import edit_pixels
    if args.model == "toy":
        print("toy model: the exact unconditional denoiser of a dozen photographs (weights/toy.py), steered by a\n"
              "toy judge. Expect CLIP guidance to turn the masked region towards the prompt's class photograph.",
              file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        components = load_pixel_model(args.model, dtype=DTYPE_NAMES.get(args.dtype), device=device)
    except Exception as error:  # the weights or the judge: one clear paragraph (status 1)
        print(cannot_load_message(args.model, error, method=args.method), file=sys.stderr)
        return 1
    started = time.perf_counter()
    label = f"{args.model} {args.method} {'ddim' if args.ddim else 'ddpm'}"
    try:
        results = edit_pixels(image, mask, args.prompt, method=args.method, model=components,
                              num_samples=args.samples, seed=args.seed, skip_timesteps=args.skip_timesteps,
                              respacing=args.respacing, clip_guidance_scale=args.clip_guidance,
                              range_scale=args.range_loss, num_views=args.views,
                              background_loss=args.background_loss, ddim=args.ddim, device=device,
                              dtype=DTYPE_NAMES.get(args.dtype), callback=ProgressLine(label))
    except EditInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return write_and_report(args, image, mask, results, output, judge_name(components), started)


def write_and_report(args, image: Image.Image, mask, results: list, output: "ResultFolder", rank: str | None,
                     started: float) -> int:
    """Write the results whole (status 1 and nothing written if that fails), then print where they are."""
    try:
        lines = write_results(output.temporary, image, mask, results, rank, method=args.method)
        if getattr(args, "mask_from", None) is not None:
            write_estimated_mask(output.temporary, mask)
        folder = output.commit()
    except OSError as error:
        print(f"error: could not write the results for {output.wanted}: {error.strerror or error}"
              f"{f' ({error.filename})' if error.filename else ''}; nothing was written. Free some space or "
              f"choose another --out, and run again", file=sys.stderr)
        return 1
    if lines:
        print("\n".join(lines))
    method = "" if args.method == "bld" else f"{args.method}, "
    estimated = ", mask-from.png (the estimated mask)" if getattr(args, "mask_from", None) is not None else ""
    print(f"{len(results)} results for {args.prompt!r} ({method}{args.model}, {time.perf_counter() - started:.1f} s) "
          f"written to {folder}/ : result_0..{len(results) - 1}.png{estimated} and grid.png (input | mask | results)")
    return 0


def judge_name(components) -> str:
    """The name of the CLIP model a pixel method ranks with: the spec's judge ("ViT-B/16" for ADM), else the model's."""
    return getattr(components.spec, "judge", None) or f"{components.spec.name} judge"


def write_estimated_mask(folder: Path, mask) -> None:
    """The mask that --mask-from estimated, as mask-from.png in `folder`: white = edit, the photograph's size."""
    mask_to_image(mask).convert("L").save(folder / MASK_FROM_FILE)


def write_results(folder: Path, image: Image.Image, mask, results: list, rank: str | None,
                  method: str = "bld") -> list:
    """result_<k>.png, grid.png and, when ranked by CLIP `rank`, ranking.txt into `folder`; its lines.

    ranking.txt: a '#' comment line, then one line per result, best first (lowest distance):
    `result_<k>.png  sample <index before ranking>  clip_distance <d, 6 decimals>`, d the cosine distance of
    CLIP(result ⊙ mask) to CLIP(prompt) for bld (§4.4), or for the pixel methods, which always rank, Blended
    Diffusion's: the spherical distance of the masked result to the prompt (its `unaugmented_clip_distance`).
    """
    for index, result in enumerate(results):
        result.save(folder / f"result_{index}.png")
    grid(image, mask, results).save(folder / "grid.png")
    if not rank:
        return []
    lines = [f"result_{index}.png  sample {result.info['sample']}  clip_distance {result.info['clip_distance']:.6f}"
             for index, result in enumerate(results)]
    how = ("(paper §4.4): lower distance is better" if method in LATENT_METHODS else
           f"as Blended Diffusion ranks ({method}): the spherical distance of the masked result to the prompt, "
           f"lower is better")
    (folder / "ranking.txt").write_text(f"# ranked by CLIP {rank} {how}\n" + "\n".join(lines) + "\n")
    return lines


def pickle_refusal_message(model: str, pickled: Path, method: str = "bld") -> str:
    """weights.pickle_checkpoint's refusal, whole, on one line, with this CLI's flags."""
    if method not in LATENT_METHODS:  # ADM's published weights are a pickle: read with weights_only=True, converted
        return (f"--model {model}: a pickle checkpoint, which can run code when loaded, so it is refused by default. "
                f"Add --allow-pickle to read it with torch.load(weights_only=True), which rebuilds tensors only and "
                f"runs nothing in the file (as --model adm-256-uncond reads OpenAI's published file, checked by its "
                f"SHA-256), or give a .safetensors file of the same weights")
    target = pickled.with_suffix(".safetensors")
    what = "a pickle checkpoint" if pickled == Path(model).expanduser() else f"its weights {pickled} are a pickle"
    then = (f"then use --model {shlex.quote(str(target))}" if pickled == Path(model).expanduser()
            else "then run again with the same --model")
    return (f"--model {model}: {what}, which can run code when loaded, so it is refused by default. Either use "
            f"the .safetensors file published beside it (the SD 1.5 and 2.1 repositories have one); or add "
            f"--allow-pickle to read it with torch.load(weights_only=True), which rebuilds tensors only and runs "
            f"nothing in the file; or convert it once into {target} (never over an existing file), {then}, with "
            f"this command, from this folder: {conversion_command(pickled, python=shlex.quote(sys.executable))}")


def cannot_load_message(model: str, error: Exception, method: str = "bld") -> str:
    """One paragraph: what failed, how to get the files, how to use a local checkpoint, and --model toy."""
    text = str(error).strip()
    if isinstance(error, OfflineError):  # its first line is what failed; the rest is the Python API's how-to
        text = text.splitlines()[0]
    what_failed = " ".join(text.split()) if text else type(error).__name__  # whole, on one line
    what_failed += "" if what_failed.endswith((".", "!", "?")) else "."
    try:
        from weights import presets
        spec = presets.get(model)
    except (ImportError, KeyError):
        spec = None
    source = next(iter(getattr(spec, "sources", ())), None)
    pixel = method not in LATENT_METHODS
    if source is not None and source.single_file:
        how = (f"To get the weights, run this once on a machine with network access (they are cached under "
               f"~/.cache/huggingface), or fetch the single file with `hf download {source.repo} "
               f"{source.single_file} --local-dir DIR` and run `python -m blend "
               f"{f'--method {method} --allow-pickle ' if pixel else ''}--model DIR/{source.single_file}`")
    elif pixel:
        how = "Check that the path exists and holds the weights of OpenAI's 256x256 unconditional ADM"
    else:
        how = "Check that the path exists and holds a Stable Diffusion 1.x/2.x checkpoint"
    if pixel:
        return (f"error: could not load the model {model!r}: {what_failed} {how}. To run {method} offline now, use "
                f"--model toy (an exact toy model of a dozen photographs with a toy CLIP judge: a real, explainable "
                f"edit in seconds on a CPU).")
    paragraph = (f"error: could not load the model {model!r}: {what_failed} {how}; a local .safetensors "
                 f"checkpoint or a diffusers folder can always be given with --model PATH. To run the example "
                 f"offline now, use --model toy (an exact toy model of a dozen photographs: a real, explainable "
                 f"edit in seconds on a CPU) or --model tiny (random weights: its output is noise by design).")
    return paragraph  # one line: the terminal wraps it, and the commands in it stay whole for copying


def unwritable_message(wanted: Path, error: OSError, given: bool) -> str:
    """Why the output folder cannot be created there, and what to do."""
    where = f"--out {wanted}" if given else f"the output folder {wanted}"
    place = Path(error.filename) if error.filename else wanted.parent
    if isinstance(error, (NotADirectoryError, FileExistsError)) or error.errno == errno.ENOTDIR:
        why = f"{place} is a file, not a folder"
    elif isinstance(error, PermissionError) or error.errno == errno.EROFS:
        why = f"{place.parent} is not writable ({error.strerror})"
    else:
        why = f"{error.strerror or error} ({place})"
    return f"{where}: cannot create the output folder: {why}; choose another " + ("--out" if given else "with --out")


def result_bytes(image_size: tuple, num_samples: int, grid_height: int = 512) -> int:
    """An upper estimate of what a run writes: each result and grid.png as uncompressed RGB, plus 1%
    (a PNG of noise is slightly larger than its pixels) and 1 MiB for headers and ranking.txt."""
    width, height = image_size
    tile_height = min(grid_height, height)
    tile_width = round(width * tile_height / height)
    pixels = num_samples * width * height + (num_samples + 2) * tile_width * tile_height
    return int(3 * pixels * 1.01) + 2**20


def space_problem(output: "ResultFolder", needed: int, given: bool) -> str | None:
    """Why the results will not fit on the disk that holds the output folder, or None."""
    free = shutil.disk_usage(output.temporary).free
    if free >= needed:
        return None
    where = f"--out {output.wanted}" if given else f"the output folder {output.wanted}"
    return (f"{where}: its disk has {free / 2**20:.1f} MiB free, and the results need up to {needed / 2**20:.1f} "
            f"MiB; free some space or choose another " + ("--out" if given else "folder with --out"))


class ResultFolder:
    """Where a run's results go: a hidden folder beside `wanted`, renamed when complete, else removed.

    Creating the hidden folder (and any missing parents) before the model loads checks that the place
    can be written. `commit()` renames it to `wanted`, or `wanted-1`, `wanted-2`, … when that name is
    taken: an existing folder or file is never written into. `discard()` removes it and the parents
    this run created, unless it was committed.

    The hidden folder, `.<wanted's name>.<8 hex digits>.partial` (PARTIAL), is held under an exclusive
    lock (flock) while this run lives. A run killed outright (SIGKILL, a power cut) cannot remove it, so
    each new run for the same name removes those whose lock it can take: their run is gone. A live run's
    folder stays locked and is left alone. (Without fcntl, on Windows, nothing is locked or removed.)
    """

    def __init__(self, wanted: Path):
        if wanted.name in ("", ".", ".."):  # "--out ." : a new folder beside the current one
            wanted = Path(os.path.abspath(wanted))
        self.wanted, self.final, self.created = wanted, None, []
        self.temporary, self._lock = None, None
        try:
            self._make_parents(wanted.parent)
            self.temporary = self._make_hidden(wanted.parent)
            self._lock = lock_folder(self.temporary, wait=True)
            remove_stale_partials(wanted.parent, {wanted.name})
        except BaseException:
            self.discard()
            raise

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        for parent in reversed(missing):
            os.mkdir(parent)
            self.created.append(parent)

    def _make_hidden(self, parent: Path) -> Path:
        while True:
            hidden = parent / f".{self.wanted.name}.{secrets.token_hex(4)}.partial"
            try:
                os.mkdir(hidden)
                return hidden
            except FileExistsError:
                continue

    def commit(self) -> Path:
        candidate, number = self.wanted, 0
        while True:
            if not candidate.exists() and not candidate.is_symlink():
                try:
                    os.rename(self.temporary, candidate)
                    self.final = candidate
                    return candidate
                except OSError as error:  # taken meanwhile (a non-empty folder): the next name
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                        raise
            number += 1
            candidate = self.wanted.with_name(f"{self.wanted.name}-{number}")

    def discard(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if self.final is not None:
            return
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)
            self.temporary = None
        for parent in reversed(self.created):
            try:
                os.rmdir(parent)
            except OSError:
                break
        self.created = []


def lock_folder(folder: Path, wait: bool) -> int | None:
    """An open descriptor of `folder` holding an exclusive flock on it, or None: another process holds it
    (wait=False), or this system has no flock. Closing the descriptor, or the process ending, releases it."""
    if fcntl is None:
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_partials(parent: Path, names: set[str]) -> None:
    """Remove the hidden folders `.<name>.<8 hex digits>.partial` in `parent`, for each name in `names`, that no
    live run holds locked: what a run killed before it could clean up (SIGKILL) left behind."""
    if fcntl is None:
        return
    for entry in os.scandir(parent):
        match = PARTIAL.fullmatch(entry.name)
        if not (match and match["name"] in names and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            descriptor = lock_folder(Path(entry.path), wait=False)
        except OSError:  # removed meanwhile, or not ours to read
            continue
        if descriptor is not None:
            try:
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(descriptor)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unconditional"


def grid(image: Image.Image, mask, results: list, height: int = 512) -> Image.Image:
    """One row: input | mask | results, each scaled to `height` (at most the image's own)."""
    tiles = [image, mask_to_image(mask), *results]
    height = min(height, image.height)
    width = round(image.width * height / image.height)
    row = Image.new("RGB", (len(tiles) * width, height), "white")
    for index, tile in enumerate(tiles):
        row.paste(tile.resize((width, height), Image.LANCZOS), (index * width, 0))
    return row


class ProgressLine:
    """A one-line progress bar on stderr, as the loop's per-step callback: `edit(..., callback=ProgressLine(label))`."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width
        self.started = None

    def __call__(self, record):
        if self.started is None:
            self.started = time.perf_counter()
        done = record.index + 1
        last = done == record.num_steps
        if last or self.stream.isatty():  # redraw in place on a terminal; only the last line in a log
            self._draw(done, record.num_steps)
        if last:
            self.stream.write("\n")
            self.started = None

    def _draw(self, done: int, total: int):
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                          f"{time.perf_counter() - self.started:.1f} s")
        self.stream.flush()
