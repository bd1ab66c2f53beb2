"""The page's jobs: one worker thread runs one edit at a time (Algorithm 1, or another latent method of
blend.edit: sdedit, repaint, diffedit, inpaint); the others wait in a queue.

A job is an edit request whose inputs were already checked (blend.app.form). Its files go into a
folder of its own, ROOT/<id>, written as the CLI writes (blend.cli.ResultFolder, write_results): first
into a hidden folder beside it, renamed when the results are all written, removed on failure or when
the server stops. A file is listed (and so served) only once it is whole: previews are written under a
temporary name and renamed, the results are listed after they are all written. Its files are

    mask.png                     the mask as it was read (white = edit), at the photograph's size
    preview_<step>.png           the decoded denoised estimate x̂0 = D(x0_fg / s) of sample 0 after a step
    result_<i>.png, grid.png     the results (best first when ranked) and input | mask | results
    ranking.txt                  when ranked: each result's sample and CLIP distance (paper §4.4)

While a server runs it holds a shared lock (flock) on ROOT. When it starts and no other server holds
one, it first removes the hidden job folders (`.<id>.<8 hex>.partial`) that a killed server left there;
nothing else in ROOT is touched.

Previews come from Algorithm 1's per-step callback (blend.StepRecord.x0_fg). Decoding one costs an
autoencoder decode, so `PreviewSchedule` decodes one only while the time spent on previews stays
under a fraction (10%) of the time spent on the steps themselves; one that takes under 20 ms (the
toy's: an identity decode and a small PNG) is taken at every step.

A job of a pixel method (blended-diffusion, local-clip) runs blend.pixel_editor.edit_pixels on the
queue's pixel model (`pixel_model`, a name for weights.load_pixel_model), loaded by the worker when
the first such job runs and kept; its previews are x̂0 itself (pixels: nothing to decode), and its
results are always ranked (ranking.txt).
"""
import contextlib
import os
import queue
import re
import secrets
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cli import ResultFolder, cannot_load_message, judge_name, write_results
from ..editor import EditInputError, edit
from ..images import mask_to_image, tensor_to_image
from ..options import LATENT_METHODS

try:
    import fcntl
except ImportError:  # Windows: no lock, no clean-up of what a killed server left
    fcntl = None

PREVIEW_FRACTION = 0.10   # the most of a run's time that previews may take
CHEAP_PREVIEW_S = 0.02    # a preview this quick is taken at every step
PREVIEW_SIDE = 256        # the long side of a preview, in pixels
MAX_WAITING = 8           # jobs queued behind the running one; more are refused (the server answers 503)
HIDDEN_JOB_FOLDER = re.compile(r"\.[0-9a-f]{16}\.[0-9a-f]{8}\.partial")  # blend.cli.ResultFolder's, for a job id


class QueueFull(Exception):
    """More than MAX_WAITING jobs are waiting."""


class JobStopped(Exception):
    """The server is stopping: the running job ends at its next step."""


class JobFailed(Exception):
    """The job cannot run (the pixel model could not be loaded); the message says why and what to do."""


@dataclass
class EditRequest:
    """A checked request: the photograph (RGB PIL), the mask ((H, W) 0/1) and the options of `blend.edit`."""
    image: Image.Image
    mask: np.ndarray
    prompt: str
    options: dict          # the latent methods: blend.edit's keywords (steps, guidance_scale, start, num_samples,
                           # seed, variant, sampler, shrink, reconstruction, size, strength, jump_length,
                           # jump_n_sample, encode_ratio); the pixel methods: edit_pixels' (num_samples, seed,
                           # skip_timesteps, respacing, clip_guidance_scale, range_scale, num_views,
                           # background_loss, ddim)
    rank: str | None = None
    warnings: list = field(default_factory=list)
    method: str = "bld"    # or "sdedit", "repaint", "diffedit", "inpaint", "blended-diffusion", "local-clip"


@dataclass
class Job:
    id: str
    request: EditRequest
    state: str = "queued"   # queued → running → done | failed
    step: int = 0
    steps: int = 0
    error: str | None = None
    folder: Path | None = None                    # where its files are now (hidden while running)
    previews: list = field(default_factory=list)  # file names, in order
    results: list = field(default_factory=list)
    extras: list = field(default_factory=list)    # mask.png, grid.png, ranking.txt

    def files(self) -> set:
        return {*self.previews, *self.results, *self.extras}

    def status(self) -> dict:
        """What GET /api/jobs/<id> answers."""
        def urls(names):
            return [f"/results/{self.id}/{name}" for name in names]
        extras = {name.split(".")[0]: f"/results/{self.id}/{name}" for name in self.extras}
        return {"id": self.id, "state": self.state, "step": self.step, "steps": self.steps,
                "results": urls(self.results), "previews": urls(self.previews), "error": self.error,
                "mask": extras.get("mask"), "grid": extras.get("grid"), "ranking": extras.get("ranking"),
                "warnings": list(self.request.warnings)}


class PreviewSchedule:
    """Whether to decode x̂0 after a step: only while previews stay under `fraction` of the time.

    After each step it adds the step's time (since the end of the previous callback) to the steps'
    total, and allows a preview when the previews' total so far plus the last preview's cost stays
    within fraction × the steps' total. With a decode that costs c steps, that is one preview every
    k ≈ c / fraction = 10·c steps (SD 1.5 on the 2-core CPU of benchmarks/README.md: a 512-px decode,
    20.8 s, costs c ≈ 2 guided steps of one sample, 10.7 s each, so k ≈ 20; with four samples c ≈ 0.5,
    k ≈ 5). The first step is always previewed, which measures c. A preview that takes under `cheap`
    seconds (the toy's identity decoder) is taken at every step.
    """

    def __init__(self, fraction: float = PREVIEW_FRACTION, cheap: float = CHEAP_PREVIEW_S):
        self.fraction, self.cheap = fraction, cheap
        self.steps_time, self.previews_time, self.last_cost = 0.0, 0.0, 0.0
        self.mark = time.perf_counter()

    def after_step(self) -> bool:
        now = time.perf_counter()
        self.steps_time += now - self.mark
        self.mark = now
        return (self.last_cost < self.cheap
                or self.previews_time + self.last_cost <= self.fraction * self.steps_time)

    def preview_took(self, started: float) -> None:
        self.mark = time.perf_counter()
        self.last_cost = self.mark - started
        self.previews_time += self.last_cost


class JobQueue:
    """Jobs by id, and the worker thread that runs them in order, on one loaded model."""

    def __init__(self, components, root: Path, *, device: str = "cpu", max_waiting: int = MAX_WAITING,
                 pixel_model: str = "adm-256-uncond"):
        self.components, self.root, self.device, self.max_waiting = components, Path(root), device, max_waiting
        self.pixel_model, self.pixel_components = pixel_model, None   # the pixel methods', loaded when first asked
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.waiting: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.rankers: dict = {}
        self.current_output = None    # the running job's ResultFolder
        self.worker = threading.Thread(target=self._work, name="blend-app-worker", daemon=True)
        self.root_lock = None         # a descriptor of root, flock-ed while serving

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._claim_root()
        self.worker.start()

    def _claim_root(self) -> None:
        """Share-lock root while serving; alone, first remove the hidden job folders a killed server left."""
        if fcntl is None:
            return
        try:
            self.root_lock = os.open(self.root, os.O_RDONLY)
        except OSError:  # a folder that can be written but not read: served without the lock or the clean-up
            return
        try:
            fcntl.flock(self.root_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another server serves root: its hidden folders are its running jobs
            fcntl.flock(self.root_lock, fcntl.LOCK_SH)
            return
        for path in self.root.iterdir():
            if HIDDEN_JOB_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        fcntl.flock(self.root_lock, fcntl.LOCK_SH)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the running job's current step; its hidden folder is removed, queued jobs are dropped.

        A job that does not reach a step within `timeout` (a long §4.2 reconstruction after the loop), or a
        second Ctrl-C while waiting, still has its hidden folder removed here: the worker thread is a
        daemon and ends with the process.
        """
        self.stopping.set()
        try:
            if self.worker.is_alive():
                self.worker.join(timeout)
        except KeyboardInterrupt:
            pass
        finally:
            output = self.current_output
            if self.worker.is_alive() and output is not None:
                output.discard()
            if self.root_lock is not None:
                with contextlib.suppress(OSError):
                    os.close(self.root_lock)   # releases the lock
                self.root_lock = None

    def submit(self, request: EditRequest) -> Job:
        with self.lock:
            if self.waiting.qsize() >= self.max_waiting:
                raise QueueFull(f"{self.waiting.qsize()} jobs are already waiting; try again when one has finished")
            job = Job(secrets.token_hex(8), request)
            self.jobs[job.id] = job
            self.waiting.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def status(self, job_id: str) -> dict | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self.lock:
            return job.status()

    def open_file(self, job_id: str, name: str):
        """An open binary file of one that job has written, or None: only names the job lists are served."""
        job = self.get(job_id)
        for _ in range(2):  # the folder may be renamed into place between reading it and opening the file
            with self.lock:
                if job is None or name not in job.files() or job.folder is None:
                    return None
                path = job.folder / name
            try:
                return open(path, "rb")
            except FileNotFoundError:
                continue
        return None

    # ------------------------------------------------------------------------- the worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.waiting.get(timeout=0.1)
            except queue.Empty:
                continue
            self._run(job)
        while not self.waiting.empty():  # stopped: what was waiting will not run
            self._finish(self.waiting.get(), "failed", "the server was stopped before this job ran")

    def _run(self, job: Job) -> None:
        output = None
        try:
            output = self.current_output = ResultFolder(self.root / job.id)
            with self.lock:
                job.state, job.folder, job.steps = "running", output.temporary, 0
            self._write(job, "mask.png", mask_to_image(job.request.mask), "extras")
            if job.request.method in LATENT_METHODS:
                results, rank = self._edit(job), job.request.rank
            else:
                results, rank = self._edit_pixels(job), judge_name(self.pixel_components)
            write_results(output.temporary, job.request.image, job.request.mask, results, rank,
                          method=job.request.method)
            with self.lock:  # listed once written: a listed file is whole
                job.results = [f"result_{index}.png" for index in range(len(results))]
                job.extras += ["grid.png", *(["ranking.txt"] if rank else [])]
                job.folder = output.commit()
            self._finish(job, "done")
        except JobStopped:
            self._finish(job, "failed", "the server was stopped while this job ran; nothing was kept")
        except (EditInputError, JobFailed) as error:
            self._finish(job, "failed", str(error))
        except Exception as error:  # the job fails, the server goes on
            traceback.print_exc()
            self._finish(job, "failed", f"{type(error).__name__}: {error}")
        finally:
            self.current_output = None
            if output is not None:
                output.discard()  # unless committed: a job's folder is whole or absent
            job.request.image = job.request.mask = None  # its files hold what is kept

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        with self.lock:
            job.state, job.error = state, error
            if state == "failed":
                job.folder, job.previews, job.results, job.extras = None, [], [], []

    def _step_callback(self, job: Job, decode):
        """The loop's callback for `job`: stop when the server stops, count the step, write a preview of
        decode(record) (x̂0 in pixels, (3, H, W) in [−1, 1]) as often as PreviewSchedule allows."""
        schedule = PreviewSchedule()

        def on_step(record) -> None:  # the loop's callback, after every step
            if self.stopping.is_set():
                raise JobStopped()
            with self.lock:
                job.step, job.steps = record.index + 1, record.num_steps
            if schedule.after_step():
                started = time.perf_counter()
                x0 = decode(record)
                if torch.isfinite(x0).all():
                    preview = tensor_to_image(x0)
                    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
                    self._write(job, f"preview_{record.index + 1:03d}.png", preview, "previews")
                schedule.preview_took(started)
        return on_step

    def _edit(self, job: Job) -> list:
        components, request = self.components, job.request
        spec = components.spec
        on_step = self._step_callback(  # x̂0 = D(x0_fg / s)
            job, lambda record: components.vae.decode(record.x0_fg[:1] / spec.scale_factor).float()[0])
        ranker = None
        if request.rank:
            if request.rank not in self.rankers:
                from weights import load_clip
                self.rankers[request.rank] = load_clip(request.rank)
            ranker = self.rankers[request.rank]
        return edit(request.image, request.mask, request.prompt, model=components, method=request.method,
                    device=self.device, callback=on_step, ranker=ranker, **request.options)

    def _edit_pixels(self, job: Job) -> list:
        """A pixel method's job: edit_pixels on the pixel model, loaded here the first time a job asks for it."""
        from weights import load_pixel_model

        from ..pixel_editor import edit_pixels
        request = job.request
        if self.pixel_components is None:
            try:
                self.pixel_components = load_pixel_model(self.pixel_model, device=self.device)
            except Exception as error:  # the job fails with the CLI's paragraph; the next job tries again
                raise JobFailed(cannot_load_message(self.pixel_model, error, method=request.method)
                                .removeprefix("error: ")) from error
        on_step = self._step_callback(job, lambda record: record.x0_fg[0].float())  # x̂0 is in pixels already
        return edit_pixels(request.image, request.mask, request.prompt, method=request.method,
                           model=self.pixel_components, device=self.device, callback=on_step, **request.options)

    def _write(self, job: Job, name: str, image: Image.Image, kind: str) -> None:
        """Write one PNG of the job under a temporary name, rename it, then list it."""
        temporary = job.folder / f".{name}.partial"
        image.save(temporary, format="PNG")
        os.replace(temporary, job.folder / name)
        with self.lock:
            getattr(job, kind).append(name)
