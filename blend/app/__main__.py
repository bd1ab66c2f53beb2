"""python -m blend.app [--model toy|sd-2.1-base|…] [--host 127.0.0.1] [--port 7860]: serve the paint-and-edit page.

The page's method select runs the latent methods on --model: Blended Latent Diffusion (bld), sdedit,
repaint and diffedit on a text-to-image model, inpaint on an inpainting model (sd-2-inpainting,
sd-1.5-inpainting), each model serving only its own; and Blended Diffusion's two pixel methods
(blended-diffusion, local-clip) on adm-256-uncond (on the toy when --model is toy), which is loaded when
the first job asks for it. Its "Mask from prompt" button paints the mask estimated from the prompt against
a reference text (DiffEdit's step 1) on --model, for every method.
It loads the model once, then serves http://HOST:PORT/ until Ctrl-C (or SIGTERM, or SIGHUP), which stops
the worker after the running job's current step (that job's unfinished folder is removed) and closes the
server. --out is checked before the model loads: it must be a folder, or one that can be made, that can be
written. A server killed outright (SIGKILL) leaves its running job's hidden folder; the next server on the
same --out removes it when it starts.
Exit status: 0 stopped by Ctrl-C, SIGTERM or SIGHUP; 1 the model could not be loaded; 2 a bad option, --out
or port; 130 interrupted before the server was up.
"""
import argparse
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import torch

from weights.pickle_checkpoint import is_pickle_checkpoint

from ..cli import DTYPE_NAMES, cannot_load_message, pickle_refusal_message
from ..editor import latent_method_of, load_model
from ..options import PIXEL_MODEL_NAMES, option_problem
from .server import EditServer, is_loopback


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m blend.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-2.1-base",
                        help="as python -m blend --method bld: sd-2.1-base (default), sd-1.5, sd-2.1, a "
                             ".safetensors file, a diffusers folder, toy (offline, exact, seconds; it serves the pixel "
                             "methods too) or tiny (random weights); or an inpainting model for --method inpaint "
                             "(sd-2-inpainting, sd-1.5-inpainting or such a checkpoint)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--out", default="outputs/app", help="where each job's folder is written (outputs/app)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or xpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default=None,
                        help="weights' dtype (default: bfloat16 for SD and SDXL on a CPU with native bf16, "
                             "else float32; the run prints which)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .ckpt/.pt/.bin --model with torch.load(weights_only=True) instead of refusing it")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    for name in ("SIGTERM", "SIGHUP"):       # stopped as Ctrl-C stops it: the running job's folder is removed
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)
    try:
        return serve(parse_args(argv))
    except KeyboardInterrupt:  # before the server was up: nothing to stop
        print("interrupted", file=sys.stderr)
        return 130


def serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}, not a loopback address: anyone who can reach this machine on "
              f"port {args.port} can run edits and read every result. Use --host 127.0.0.1 to keep it local.",
              file=sys.stderr)
    problem = option_problem(model=args.model, device=args.device, cli=True,  # the CLI's checks and words
                             method=latent_method_of(args.model))         # an inpainting model serves inpaint
    if args.model in PIXEL_MODEL_NAMES and args.model != "toy":
        problem = (f"--model {args.model}: blend.app loads a latent model for --method bld, and runs the pixel "
                   f"methods of the form on {args.model} itself, loaded when the first job asks for it; give a "
                   f"latent model (sd-2.1-base, the default, …) or toy, which serves every method")
    if problem is None and not 0 <= args.port <= 65535:
        problem = f"--port {args.port}: expected a port number in 0 … 65535 (0 picks a free one)"
    problem = problem or out_problem(args.out) or listen_problem(args.host, args.port)
    if problem is None and not args.allow_pickle and is_pickle_checkpoint(Path(args.model).expanduser()):
        problem = pickle_refusal_message(args.model, Path(args.model).expanduser())
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"loading {args.model} on {device} …", file=sys.stderr)
    try:
        components = load_model(args.model, dtype=DTYPE_NAMES.get(args.dtype), device=device,
                                allow_pickle=args.allow_pickle)
    except Exception as error:
        print(cannot_load_message(args.model, error), file=sys.stderr)
        return 1
    try:
        server = EditServer(components, args.model, Path(args.out).expanduser(), host=args.host, port=args.port,
                            device=device)
    except OSError as error:  # taken since the check
        print(f"error: {listen_message(args.host, args.port, error)}", file=sys.stderr)
        return 2
    try:
        print(f"serving {args.model} at {server.url}  (Ctrl-C stops; job folders go to {args.out}/)", file=sys.stderr)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping: the running job ends at its next step …", file=sys.stderr)
    finally:
        server.close()
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def out_problem(out: str) -> str | None:
    """Why --out cannot hold the jobs' folders, or None: it, or its nearest existing parent, must be a writable
    folder."""
    folder = Path(out).expanduser()
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        what = "a file" if folder.is_file() else "a link to nothing" if folder.is_symlink() else "something else"
        return f"--out {out}: {folder} is {what}, not a folder; choose another --out"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".blend-app-write-check-", dir=folder))
    except OSError as error:
        return (f"--out {out}: cannot write in {folder} ({error.strerror or error}); choose a folder you can write "
                f"to with --out")
    return None


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, found by binding a socket as the server will, or None."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as http.server's servers do
            trial.bind((host, port))
    except OSError as error:
        return listen_message(host, port, error)
    return None


def listen_message(host: str, port: int, error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"--host {host}: not an address of this machine ({error.strerror or error}); use 127.0.0.1"
    return f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port (0 picks a free one)"


sys.exit(main())
