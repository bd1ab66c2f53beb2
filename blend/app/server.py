"""The page's HTTP server: the standard library's ThreadingHTTPServer, one page, a small JSON API.

Routes (every other path, however spelled or encoded, is a 404; nothing is looked up on disk by
a name taken from the URL):

    GET  /                         static/index.html (with /static/app.js and /static/app.css)
    GET  /example.jpg              the shipped example photograph; /example_mask.png its mask
    GET  /api/info                 {"model", "pixel_model", "methods", "model_methods" (the latent methods the
                                   loaded model serves), "variants", "samplers", "reconstructions", "clip_names",
                                   "default_steps" (each sampler's, blend.options.DEFAULT_STEPS), "repaint_steps",
                                   "defaults" (steps "": the sampler's), "max_upload"}
    POST /api/edit                 multipart form (blend.app.form) → 202 {"job": ID}; 400 {"error"} for bad
                                   input, with the CLI's message; 413 beyond max_upload bytes; 503 when the
                                   queue is full
    POST /api/mask-from            multipart form: image, prompt, reference (and seed, steps, guidance, size) →
                                   200 image/png, the mask where the prompt and the reference predict different
                                   noise (blend.editor.mask_from_prompt: DiffEdit's step 1), white = edit, at the
                                   photograph's size; 400 {"error"} for bad input. It runs while the request waits,
                                   one at a time, on the loaded model (beside a running job)
    GET  /api/jobs/ID              {"state": queued|running|done|failed, "step", "steps", "results": [URLs],
                                   "previews": [URLs], "error", "mask", "grid", "ranking", "warnings"}
    GET  /results/ID/NAME          a file the job ID has written (blend.app.jobs), by its listed name only

Safety: when bound to a loopback address, a request whose Host header names another host is
refused (403: a page elsewhere cannot reach the server by DNS rebinding), and a POST whose Origin
is not this server's is refused (403: another site cannot submit jobs from a visitor's browser).
"""
import io
import ipaddress
import json
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from clip import CLIP_NAMES

from ..algorithm import VARIANTS
from ..cli import EXAMPLE_IMAGE, EXAMPLE_MASK, EXAMPLE_PROMPT, parse_args
from ..editor import mask_from_prompt
from ..errors import EditInputError
from ..options import DEFAULT_STEPS, METHODS, REPAINT_STEPS, SAMPLERS
from ..reconstruction import MODES
from .form import FormError, edit_request, mask_from_request, model_methods, parse_multipart, pixel_model_name
from .jobs import JobQueue, QueueFull

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 20 * 2**20   # one request's body; beyond it: 413
DRAIN_LIMIT = 4 * MAX_UPLOAD_BYTES  # an oversized body up to this is read and dropped, so the client sees the 413
JOB_PATH = re.compile(r"/api/jobs/([0-9a-f]{16})")
RESULT_PATH = re.compile(r"/results/([0-9a-f]{16})/([a-z0-9_]{1,64}\.(?:png|txt))")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".jpg": "image/jpeg",
                 ".txt": "text/plain; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class EditServer(ThreadingHTTPServer):
    """Serves the page and runs the jobs of one loaded model (`components`, named `model_name`)."""

    daemon_threads = True

    def __init__(self, components, model_name: str, out: Path, *, host: str = "127.0.0.1", port: int = 7860,
                 device: str = "cpu", max_upload: int = MAX_UPLOAD_BYTES, quiet: bool = False):
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.components, self.model_name, self.max_upload, self.quiet = components, model_name, max_upload, quiet
        self.out, self.checking, self.estimating = Path(out), threading.Lock(), threading.Lock()
        self.jobs = JobQueue(components, self.out, device=device, pixel_model=pixel_model_name(model_name))
        self.jobs.start()
        self.port = self.server_address[1]
        self.loopback = is_loopback(host)
        names = {host, "localhost", "127.0.0.1", "[::1]"} if self.loopback else set()
        self.allowed_hosts = {f"{name}:{self.port}" for name in names} | names if self.loopback else None
        self.files = {"/": STATIC / "index.html", "/static/app.js": STATIC / "app.js",
                      "/static/app.css": STATIC / "app.css", "/example.jpg": EXAMPLE_IMAGE,
                      "/example_mask.png": EXAMPLE_MASK}

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def info(self) -> dict:
        defaults = parse_args([])
        return {"model": self.model_name, "pixel_model": self.jobs.pixel_model, "methods": list(METHODS),
                "model_methods": model_methods(self.components),
                "variants": list(VARIANTS), "samplers": list(SAMPLERS), "reconstructions": list(MODES),
                "default_steps": dict(DEFAULT_STEPS), "repaint_steps": REPAINT_STEPS,
                "clip_names": list(CLIP_NAMES), "max_upload": self.max_upload,
                "defaults": {"prompt": EXAMPLE_PROMPT, "method": model_methods(self.components)[0],
                             "steps": "" if defaults.steps is None else defaults.steps,
                             "samples": defaults.samples, "guidance": self.components.spec.guidance_scale,
                             "start": defaults.start, "seed": defaults.seed, "variant": defaults.variant,
                             "sampler": defaults.sampler or "", "shrink": defaults.shrink,
                             "reconstruction": defaults.reconstruction, "skip-timesteps": defaults.skip_timesteps,
                             "respacing": defaults.respacing, "clip-guidance": defaults.clip_guidance,
                             "range-loss": defaults.range_loss, "views": defaults.views, "ddim": defaults.ddim,
                             "background-loss": defaults.background_loss, "strength": "",
                             "jump-length": defaults.jump_length, "jump-n-sample": defaults.jump_n_sample,
                             "encode-ratio": defaults.encode_ratio, "reference": ""}}

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the browser went away mid-answer: nothing to report
            return
        super().handle_error(request, client_address)

    def close(self) -> None:
        """Stop the worker (the running job's hidden folder is removed), then the listening socket."""
        self.jobs.stop()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: EditServer
    server_version = "blend-app"
    timeout = 60  # seconds a connection may sit idle: a stalled upload does not hold a thread for ever

    # ------------------------------------------------------------------------- routes
    def do_GET(self):
        if not self.host_allowed():
            return
        path = self.path.split("?", 1)[0]
        if path in self.server.files:
            file = self.server.files[path]
            return self.send(200, file.read_bytes(), CONTENT_TYPES[file.suffix])
        if path == "/api/info":
            return self.send_json(200, self.server.info())
        match = JOB_PATH.fullmatch(path)
        if match:
            status = self.server.jobs.status(match.group(1))
            return self.send_json(200, status) if status else self.send_json(404, {"error": "no such job"})
        match = RESULT_PATH.fullmatch(path)
        if match:
            opened = self.server.jobs.open_file(*match.groups())
            if opened is not None:
                with opened:
                    return self.send(200, opened.read(), CONTENT_TYPES[Path(match.group(2)).suffix])
        self.send_json(404, {"error": f"not found: {path[:200]}"})

    def do_POST(self):
        if not self.host_allowed():
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/api/edit", "/api/mask-from"):
            return self.send_json(404, {"error": "not found; POST /api/edit or /api/mask-from"})
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return self.send_json(403, {"error": f"a request from the page at {origin} is refused: only this "
                                                 f"server's own page may submit edits"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return self.send_json(411, {"error": "a Content-Length header (a byte count) is required"})
        if length > self.server.max_upload:
            self.drain(length)
            return self.send_json(413, {"error": f"the upload is {length / 2**20:.1f} MiB; at most "
                                                 f"{self.server.max_upload / 2**20:.0f} MiB is accepted. Send a "
                                                 f"smaller photograph (PNG or JPEG)"})
        body = self.rfile.read(length)
        try:
            fields = parse_multipart(self.headers.get("Content-Type", ""), body)
            if path == "/api/mask-from":
                return self.mask_from(fields)
            with self.server.checking:  # one request at a time: the checks record warnings, which are global
                request = edit_request(fields, model_name=self.server.model_name, components=self.server.components,
                                       output_root=self.server.out, device=self.server.jobs.device)
            job = self.server.jobs.submit(request)
        except FormError as error:
            return self.send_json(400, {"error": str(error)})
        except QueueFull as error:
            return self.send_json(503, {"error": str(error)})
        self.send_json(202, {"job": job.id})

    def mask_from(self, fields: dict) -> None:
        """POST /api/mask-from: the estimated mask as a PNG (white = edit), or 400 with the reason."""
        with self.server.checking:  # the checks record warnings, which are global
            image, prompt, reference, keywords = mask_from_request(fields, model_name=self.server.model_name,
                                                                   components=self.server.components)
        try:
            with self.server.estimating:
                mask = mask_from_prompt(image, prompt, reference, model=self.server.components,
                                        device=self.server.jobs.device, **keywords)
        except EditInputError as error:
            return self.send_json(400, {"error": str(error)})
        png = io.BytesIO()
        Image.fromarray((mask * 255).astype(np.uint8)).save(png, format="PNG")
        self.send(200, png.getvalue(), "image/png")

    # ------------------------------------------------------------------------- helpers
    def host_allowed(self) -> bool:
        host = self.headers.get("Host")
        allowed = self.server.allowed_hosts
        if allowed is None or host is None or host in allowed:
            return True
        self.send_json(403, {"error": f"Host {host[:100]!r} is not this server; open {self.server.url}"})
        return False

    def drain(self, length: int) -> None:
        """Read and drop an oversized body (up to DRAIN_LIMIT), so that the client reads the 413, not a reset."""
        left = min(length, DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 2**20))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass
        self.close_connection = True

    def send_json(self, status: int, value: dict) -> None:
        self.send(status, json.dumps(value).encode(), "application/json")

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        if not self.server.quiet and isinstance(code, int) and code >= 400:
            super().log_request(code, size)

    def log_message(self, format, *args):
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")
