#!/usr/bin/env python
"""How far DDIM and DPM-Solver++(2M) land from the exact solution, through Algorithm 1, on the exact toy model.

    python -m benchmarks.sampler_error                    # 32×32, 6 prompts × 3 seeds × 4 samples; about 2 minutes
    python -m benchmarks.sampler_error --size 16 --seeds 1

The toy (weights/toy.py) is the exact posterior-mean denoiser of a dozen photographs, so the probability-flow ODE
that both samplers integrate has a true solution, and the only error a sampler makes is its own. The problem:

  * Algorithm 1, variant "paper", on the shipped example photograph and its mask (`python -m blend --model toy`'s),
    at a working size of `--size` pixels a side, the toy's guidance 1.0, for each of the toy's six prompts, each
    `--seeds` generator seeds of `--samples` samples (the rows of one batch: each its own noise).
  * One noise for the whole run: within a run every draw returns the first one, ε (`one_noise_draw`), so the
    background is z_bg(t) = √ᾱ_t·z_init + √(1 − ᾱ_t)·ε, the exact path of the noised source that z_k starts on.
    Algorithm 1 draws a fresh background noise each step; with S steps that is S other draws, so a 10-step and a
    999-step run would not solve the same equation, and neither would have a true solution.
  * start = `--start` (0.25, the default of the CLI and of the official script, which is what users run): the run
    of S steps starts at t_k = timesteps[⌊S·start⌋] (701 for 10 and 20 steps, 727 for 15, 721 for 25, 741 for 50).
    Its reference starts at the same t_k from the same z_k: DDIM (η = 0) over every timestep t_k, t_k − 1, …, 1
    (999 steps, the most that offset 1 allows), so each row is measured against the solution of its own problem.
  * float64 throughout (the toy computes in float64 anyway), so that the rounding of 999 float32 steps does not
    blur errors of 1e-6.

What is compared is the latent at t = 1, the last timestep every run visits, inside the mask. The last step
then only maps it to the sampler's own end point: DDIM's ᾱ_0, DPM-Solver++'s σ = 0, where z = x̂0(z_1). On this
toy x̂0(z_1) is one photograph's pixels to the last bit (at t = 1 the posterior is one-hot), so the end points
tell only which photograph a sample reached: a sample whose final x̂0 is another photograph than its
reference's is counted under "other photograph" and left out of the RMS and max columns (its error is that
of a whole photograph, about 0.3 RMS, and says nothing of the solver's order but that it took another branch).

The reference's own error is estimated by running DPM-Solver++ over the same 999 timesteps: their difference
is printed under the table (the second-order run is far closer to the solution than either error shown).
"""
import argparse
import contextlib
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

import weights
from blend import blended_latent_diffusion
from blend.cli import EXAMPLE_IMAGE, EXAMPLE_MASK
from blend.editor import working_size
from blend.images import image_to_tensor, read_image, read_mask
from blend.masks import resize_mask
from samplers import DDIMSampler, DPMSolverSampler
from weights.toy import ToyDenoiser

SAMPLERS = {"DDIM": DDIMSampler, "DPM-Solver++(2M)": DPMSolverSampler}
STEPS = (10, 15, 20, 25, 30, 40, 50)   # 30 and 40 locate where DPM-Solver++ meets DDIM-50
REFERENCE_STEPS = 999                 # every timestep 999 … 1: the most "leading" spacing with offset 1 allows
PROMPTS = ("a cat", "an astronaut", "a rocket", "brick", "grass", "coffee")   # the toy's six classes
OTHER_PHOTOGRAPH = 1e-3               # RMS of final x̂0 differences above which a sample reached another photograph


@dataclass(frozen=True)
class Problem:
    """One edit: the toy's denoiser at the working size, z_init (B, 3, h, w) float64, the latent mask (1, 1, h, w)."""
    prompt: str
    unet: ToyDenoiser
    z_init: torch.Tensor
    mask: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor


@dataclass(frozen=True)
class Outcome:
    """What a run leaves: the latent it stepped from at t = 1 (B, 3, h, w), and its final x̂0."""
    z_at_1: torch.Tensor
    x0_final: torch.Tensor


def toy_problem(components, prompt: str, size: int, samples: int) -> Problem:
    """The example photograph and mask at `size`, as `blend.edit` prepares them (Algorithm 1, lines 1–2).

    The denoiser is the toy's over its photographs resized once to the working size, which is what the toy
    computes at every call (`ToyDenoiser.data_at`), so it is the same function, only cached.
    """
    source = read_image(EXAMPLE_IMAGE)
    pixel_mask = read_mask(EXAMPLE_MASK, source.size)
    width, height = working_size(source.size, size, components.spec.size_multiple)
    x = image_to_tensor(source.resize((width, height), Image.LANCZOS)).double()             # z_init = x (identity)
    mask = resize_mask(torch.from_numpy(pixel_mask)[None, None], (height, width)).double()  # line 1
    toy = components.unet
    images = F.interpolate(toy.images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    unet = ToyDenoiser(images, toy.labels, components.spec.build_schedule())
    cond, uncond = weights.prompt_conditioning(components, prompt, (height, width), "cpu")
    return Problem(prompt, unet, x.expand(samples, -1, -1, -1), mask, cond, uncond)


@contextlib.contextmanager
def one_noise_draw():
    """Within the block every torch.randn returns (a copy of) the block's first draw: one ε for the whole run."""
    randn, drawn = torch.randn, []

    def the_first_draw(*args, **kwargs):
        if not drawn:
            drawn.append(randn(*args, **kwargs))
        return drawn[0].clone()

    torch.randn = the_first_draw
    try:
        yield
    finally:
        torch.randn = randn


def start_at(sampler, t: int) -> float:
    """The `start` fraction whose run begins at timestep t: ⌊S·start⌋ is t's index (the half keeps it exact)."""
    index = [int(step) for step in sampler.timesteps].index(int(t))
    return (index + 0.5) / len(sampler.timesteps)


@torch.no_grad()
def run(problem: Problem, sampler, start: float, seed: int) -> tuple[int, Outcome]:
    """Algorithm 1 (variant paper) with one noise draw: (its first timestep t_k, the outcome)."""
    records = []

    def keep(record):
        records[:] = [record] if not records else [records[0], record]   # the first and the last step

    with one_noise_draw():
        blended_latent_diffusion(problem.unet, sampler, problem.z_init, problem.mask, problem.cond, problem.uncond,
                                 guidance_scale=1.0, start=start, generator=torch.Generator().manual_seed(seed),
                                 variant="paper", callback=keep)
    first, last = records[0], records[-1]
    if last.t != 1:
        raise ValueError(f"the run's last timestep is {last.t}, not 1: use SD's offset 1")
    return first.t, Outcome(last.z_t, last.x0_fg)


def reference(problem: Problem, schedule, t_first: int, seed: int, kind=DDIMSampler) -> Outcome:
    """The solution from t_first: `kind` (DDIM) over every timestep t_first, t_first − 1, …, 1, from the same z_k."""
    sampler = kind(schedule, REFERENCE_STEPS)
    t, outcome = run(problem, sampler, start_at(sampler, t_first), seed)
    if t != t_first:
        raise RuntimeError(f"the reference started at t = {t}, not at t_k = {t_first}")
    return outcome


@dataclass
class Errors:
    """Squared errors summed over the mask, their count, the largest, each sample's RMS, and the samples that
    reached another photograph than the reference."""
    squared: float = 0.0
    count: int = 0
    largest: float = 0.0
    other: int = 0
    samples: int = 0
    per_sample: list = field(default_factory=list)

    def add(self, outcome: Outcome, truth: Outcome, mask: torch.Tensor) -> None:
        inside = mask.bool().expand_as(outcome.z_at_1)
        for row in range(outcome.z_at_1.shape[0]):
            where = inside[row]
            self.samples += 1
            if (outcome.x0_final[row] - truth.x0_final[row])[where].pow(2).mean().sqrt() > OTHER_PHOTOGRAPH:
                self.other += 1
                continue
            difference = (outcome.z_at_1[row] - truth.z_at_1[row])[where]
            self.squared += difference.pow(2).sum().item()
            self.count += difference.numel()
            self.per_sample.append(difference.pow(2).mean().sqrt().item())
            self.largest = max(self.largest, difference.abs().max().item())

    @property
    def rms(self) -> float:
        return (self.squared / self.count) ** 0.5 if self.count else float("nan")

    @property
    def median(self) -> float:
        """The median over the samples of each one's RMS error: the typical sample, where RMS and max are the
        few hardest (those whose posterior switches photographs late)."""
        return statistics.median(self.per_sample) if self.per_sample else float("nan")


def measure(components, *, size: int = 32, start: float = 0.25, prompts=PROMPTS, seeds=(0, 1, 2), samples: int = 4,
            steps=STEPS, samplers=SAMPLERS, progress=None) -> tuple[dict, Errors]:
    """{(sampler name, steps): Errors} over the prompts and seeds, and the reference's estimated own error
    (DPM-Solver++ over the reference's 999 timesteps against it)."""
    errors = {(name, count): Errors() for name in samplers for count in steps}
    reference_error = Errors()
    schedule = components.spec.build_schedule()
    for prompt in prompts:
        problem = toy_problem(components, prompt, size, samples)
        for seed in seeds:
            truths = {}
            for count in steps:
                for name, kind in samplers.items():
                    t_first, outcome = run(problem, kind(schedule, count), start, seed)
                    if t_first not in truths:
                        truths[t_first] = reference(problem, schedule, t_first, seed)
                    errors[name, count].add(outcome, truths[t_first], problem.mask)
            t_first = max(truths)
            reference_error.add(reference(problem, schedule, t_first, seed, kind=DPMSolverSampler), truths[t_first],
                                problem.mask)
            if progress is not None:
                progress(f"{prompt!r} seed {seed} done")
    return errors, reference_error


def table(errors: dict, start: float) -> str:
    """The markdown table: one row per sampler and step count."""
    lines = ["| sampler | steps | steps run (network calls) | RMS error | max abs error | median sample's RMS | "
             "other photograph |", "|---|---:|---:|---:|---:|---:|---:|"]
    for (name, count), error in errors.items():
        lines.append(f"| {name} | {count} | {count - int(count * start)} | {error.rms:.1e} | {error.largest:.1e} | "
                     f"{error.median:.1e} | {error.other} of {error.samples} |")
    return "\n".join(lines)


def matching_steps(errors: dict, figures=("rms", "largest", "other"), names=tuple(SAMPLERS),
                   target_steps: int = 50) -> int | None:
    """The fewest steps from which on the second sampler's `figures` are each at most the first sampler's at
    `target_steps` (at that many steps and at every larger count measured); None when no count is."""
    first, second = names
    target = errors[first, target_steps]
    counts = sorted(count for name, count in errors if name == second)
    good = [all(getattr(errors[second, count], figure) <= getattr(target, figure) for figure in figures)
            for count in counts]
    for index, count in enumerate(counts):
        if all(good[index:]):
            return count
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler_error", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="the working size in pixels (default 32)")
    parser.add_argument("--start", type=float, default=0.25, help="Algorithm 1's start (default 0.25)")
    parser.add_argument("--seeds", type=int, default=3, help="generator seeds 0 … N − 1 per prompt (default 3)")
    parser.add_argument("--samples", type=int, default=4, help="samples per run, each its own noise (default 4)")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS),
                        help=f"step counts (default {' '.join(map(str, STEPS))}; the match with DDIM-50 needs 50)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the toy's calls are small, and more threads only contend)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    components = weights.load("toy")
    errors, reference_error = measure(components, size=args.size, start=args.start, seeds=tuple(range(args.seeds)),
                                      samples=args.samples, steps=tuple(args.steps),
                                      progress=lambda line: print(line, flush=True))
    samples = args.seeds * args.samples * len(PROMPTS)
    print(f"\nThe toy, {args.size}×{args.size}, start {args.start}, {len(PROMPTS)} prompts × {args.seeds} seeds × "
          f"{args.samples} samples = {samples} samples; error of the latent at t = 1 inside the mask against DDIM "
          f"over every timestep from the same z_k (float64):\n")
    print(table(errors, args.start))
    print(f"\nThe reference's own error, estimated as DPM-Solver++ over the same {REFERENCE_STEPS} timesteps against "
          f"it: RMS {reference_error.rms:.1e}, max {reference_error.largest:.1e}, median sample's RMS "
          f"{reference_error.median:.1e}, other photograph {reference_error.other} of {reference_error.samples}.")
    if 50 in args.steps:
        for figures, words in ((("rms",), "RMS error is"),
                               (("rms", "largest", "other"), "RMS error, max error and other photographs are")):
            matched = matching_steps(errors, figures)
            print(f"DPM-Solver++(2M)'s {words} at most DDIM-50's from {matched} steps on." if matched else
                  f"DPM-Solver++(2M)'s {words} not at most DDIM-50's at any step count measured.")
    print(f"{time.perf_counter() - started:.0f} s on {cpu_name()}, {args.threads} torch thread(s), torch "
          f"{torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
