"""python -m blend.app: a local web page to paint a mask on a photograph, run Algorithm 1 and watch x̂0 step by step.

    server.py   the HTTP server (standard library only): the page, the JSON API, the job outputs
    form.py     POST /api/edit's multipart form, checked by the CLI's own checks
    jobs.py     the queue and its one worker: Algorithm 1 with a per-step preview of x̂0, atomic job folders
    static/     index.html, app.js, app.css: the page, plain JavaScript and CSS, no network needed
"""
from .server import MAX_UPLOAD_BYTES, EditServer

__all__ = ["EditServer", "MAX_UPLOAD_BYTES"]
