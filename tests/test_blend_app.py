"""python -m blend.app's HTTP API, in-process, against a server on a free loopback port with the toy model."""
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import running_edit_server
from PIL import Image

from blend.app import MAX_UPLOAD_BYTES
from blend.cli import EXAMPLE_IMAGE
from blend.cli import main as cli_main
from blend.editor import load_model

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture
def server(toy, tmp_path):
    with running_edit_server(toy, tmp_path / "out") as server:
        yield server


def photo_and_mask(width=128, height=96):
    """A photograph whose long side is the toy's working size (so it is edited at its own size) and a box mask."""
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((width, height), Image.LANCZOS)
    mask = np.zeros((height, width), np.uint8)
    mask[20:60, 30:90] = 255
    return photo, Image.fromarray(mask)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: dict) -> tuple[str, bytes]:
    """(Content-Type, body) of a multipart/form-data form; a bytes value is sent as a file."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = f'Content-Disposition: form-data; name="{name}"; filename="{name}.png"\r\nContent-Type: image/png'
            data = value
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', str(value).encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type")
    finally:
        connection.close()


def post_edit(server, **fields):
    content_type, body = multipart(fields)
    status, data, _ = request(server, "POST", "/api/edit", body, {"Content-Type": content_type})
    return status, json.loads(data)


def wait_for(server, job_id, states=("done", "failed")):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        status, data, _ = request(server, "GET", f"/api/jobs/{job_id}")
        assert status == 200
        job = json.loads(data)
        if job["state"] in states:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not reach {states} in {WAIT_S} s: {job}")


def fetch_image(server, url) -> np.ndarray:
    status, data, content_type = request(server, "GET", url)
    assert status == 200 and content_type == "image/png", (url, status)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_edit_round_trip_paints_inside_the_mask_keeps_the_rest_and_writes_one_whole_folder(server):
    photo, mask = photo_and_mask()
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=20, samples=2,
                               seed=3, variant="paper")
    assert status == 202, answer
    job = wait_for(server, answer["job"])
    assert job["state"] == "done", job
    assert job["step"] == job["steps"] == 15                   # 20 steps, start 0.25: 15 run
    assert len(job["results"]) == 2 and job["grid"] and job["mask"]
    assert 1 <= len(job["previews"]) <= 15
    source = np.asarray(photo).astype(int)
    inside = np.asarray(mask) > 127
    assert ((fetch_image(server, job["mask"])[..., 0] > 127) == inside).all()
    for url in job["results"]:
        result = fetch_image(server, url)
        assert (result[~inside] == source[~inside]).all()      # paper variant, identity autoencoder: exact
        assert np.abs(result[inside] - source[inside]).mean() > 10
    preview = fetch_image(server, job["previews"][0])
    assert preview.shape == (96, 128, 3)
    folder = server.out / answer["job"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["mask.png", "grid.png", "result_0.png", "result_1.png", *(u.rsplit("/", 1)[1] for u in job["previews"])])
    assert [p.name for p in server.out.iterdir()] == [answer["job"]]  # nothing hidden or half-written left


def cli_error(tmp_path, monkeypatch, capsys, photo: bytes, mask: bytes, *options) -> str:
    """What python -m blend prints after 'error: ' for the same files and options."""
    (tmp_path / "image.png").write_bytes(photo)
    (tmp_path / "mask.png").write_bytes(mask)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli_main(["--model", "toy", "--image", "image.png", "--mask", "mask.png", *options]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: "):]


def test_bad_mask_or_option_is_refused_with_400_and_the_clis_message(server, tmp_path, monkeypatch, capsys):
    photo, _ = photo_and_mask()
    empty = png(Image.new("L", photo.size, 0))
    status, answer = post_edit(server, image=png(photo), mask=empty, prompt="a cat")
    assert status == 400
    assert answer["error"] == cli_error(tmp_path, monkeypatch, capsys, png(photo), empty)
    assert answer["error"].startswith("the mask is empty: nothing to edit")

    _, mask = photo_and_mask()
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=0)
    assert status == 400
    assert answer["error"] == cli_error(tmp_path, monkeypatch, capsys, png(photo), png(mask), "--steps", "0")

    status, answer = post_edit(server, image=png(photo), mask=b"GIF89a not really", prompt="a cat")
    assert status == 400 and answer["error"].startswith("cannot read the mask file mask.png as an image")
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        bomb = png(Image.new("L", (12000, 12000)))               # 144 M pixels in 140 kB
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    status, answer = post_edit(server, image=bomb, mask=png(mask), prompt="a cat")
    assert status == 400 and "more pixels than Pillow opens safely" in answer["error"]
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a dog")
    assert status == 400 and "names none of them" in answer["error"]
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", guidance_scale=2)
    assert status == 400 and "'guidance_scale'" in answer["error"] and "guidance" in answer["error"]
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps="ten")
    assert status == 400 and answer["error"] == "argument --steps: invalid int value: 'ten'"
    assert list(server.out.iterdir()) == []                  # a refused request writes nothing


def test_upload_beyond_the_limit_is_refused_with_413(server):
    content_type, body = multipart({"image": os.urandom(MAX_UPLOAD_BYTES + 2**20), "mask": b"x", "prompt": "a cat"})
    status, data, _ = request(server, "POST", "/api/edit", body, {"Content-Type": content_type})
    assert status == 413 and "at most 20 MiB" in json.loads(data)["error"]
    status, _, _ = request(server, "POST", "/api/edit", b"", {"Content-Type": content_type, "Content-Length": "-1"})
    assert status == 411
    assert list(server.out.iterdir()) == []


def test_paths_outside_the_page_static_files_and_job_outputs_are_404(server):
    photo, mask = photo_and_mask()
    job_id = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=8, samples=1)[1]["job"]
    assert wait_for(server, job_id)["state"] == "done"
    assert request(server, "GET", f"/results/{job_id}/result_0.png")[0] == 200
    assert request(server, "GET", "/static/app.js")[0] == 200
    outside = ["/../setup.cfg", "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
               "/static/%2E%2E%2F%2E%2E%2Fcli.py", "/static//etc/passwd", "//etc/passwd", "/etc/passwd",
               "/static/app.js/..", "/static/./app.js", "/static/app.js%00", "/static\\app.js", "/blend/cli.py",
               f"/results/{job_id}/../../setup.cfg", f"/results/{job_id}/..%2f..%2fsetup.cfg",
               f"/results/{job_id}/%2e%2e/{job_id}/result_0.png", f"/results/{job_id}/result_9.png",
               f"/results/{job_id}/.result_0.png.partial", f"/results/{job_id}//result_0.png",
               f"/results/{job_id}/result_0.png/", "/results/0000000000000000/result_0.png",
               f"/results/{job_id.upper()}/result_0.png", f"/results/{job_id}%2fresult_0.png",
               "/api/jobs/../info", "/api/jobs/0000000000000000", "/static/", "/assets/example.jpg"]
    for path in outside:
        status, data, _ = request(server, "GET", path)
        assert status == 404, (path, status)
        assert json.loads(data)["error"].startswith(("not found", "no such job"))


def test_two_jobs_queue_and_run_one_after_the_other(server, monkeypatch):
    unet, gate, calls = server.components.unet, threading.Event(), []
    forward = type(unet).forward

    def gated(*args, **kwargs):  # the first job's steps wait at the gate
        calls.append(time.monotonic())
        assert gate.wait(WAIT_S)
        return forward(unet, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", gated)
    photo, mask = photo_and_mask()
    first = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=8, samples=1)[1]["job"]
    second = post_edit(server, image=png(photo), mask=png(mask), prompt="a rocket", steps=8, samples=1)[1]["job"]
    deadline = time.monotonic() + WAIT_S
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    states = [json.loads(request(server, "GET", f"/api/jobs/{job}")[1])["state"] for job in (first, second)]
    assert states == ["running", "queued"]
    gate.set()
    done_first, done_second = wait_for(server, first), wait_for(server, second)
    assert done_first["state"] == done_second["state"] == "done"
    assert (server.out / first).is_dir() and (server.out / second).is_dir()
    assert (server.out / first / "grid.png").stat().st_mtime <= (server.out / second / "mask.png").stat().st_mtime


def test_stopping_the_server_removes_the_running_jobs_unfinished_folder(server, monkeypatch):
    unet, started = server.components.unet, threading.Event()
    forward = type(unet).forward

    def slow(*args, **kwargs):
        started.set()
        time.sleep(0.05)
        return forward(unet, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", slow)
    photo, mask = photo_and_mask()
    job_id = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=400, samples=1)[1]["job"]
    assert started.wait(WAIT_S)
    assert any(path.name.endswith(".partial") for path in server.out.iterdir())
    server.jobs.stop()
    job = server.jobs.status(job_id)
    assert job["state"] == "failed" and "stopped" in job["error"] and job["results"] == []
    assert list(server.out.iterdir()) == []


def test_requests_for_another_host_or_from_another_origin_are_refused(server):
    status, _, _ = request(server, "GET", "/", headers={"Host": f"attacker.example:{server.port}"})
    assert status == 403
    photo, mask = photo_and_mask()
    content_type, body = multipart({"image": png(photo), "mask": png(mask), "prompt": "a cat"})
    status, data, _ = request(server, "POST", "/api/edit", body,
                              {"Content-Type": content_type, "Origin": "http://attacker.example"})
    assert status == 403 and list(server.out.iterdir()) == []


@pytest.mark.processes
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_python_m_blend_app_cleanly_and_removes_the_running_jobs_folder(tmp_path, stop):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "blend.app", "--model", "toy", "--port", "0", "--out", str(out)],
                               cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        lines, deadline = [], time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not any(line.startswith("serving") for line in lines):
            lines.append(process.stderr.readline())
        serving = [line for line in lines if line.startswith("serving toy at http://127.0.0.1:")]
        assert serving, lines
        running = types.SimpleNamespace(port=int(serving[0].split("127.0.0.1:")[1].split("/")[0]))
        photo, mask = photo_and_mask()
        status, answer = post_edit(running, image=png(photo), mask=png(mask), prompt="a cat", steps=999, start=0)
        assert status == 202, answer
        wait_for(running, answer["job"], states=("running",))
        assert [path.name.endswith(".partial") for path in out.iterdir()] == [True]
        process.send_signal(stop)
        status, rest = process.wait(WAIT_S), process.stderr.read()
        assert status == 0 and "stopping" in rest, (status, lines, rest)
        assert list(out.iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("preview_cost, expected", [(2.0, range(4, 7)), (0.001, range(100, 101))])
def test_previews_stay_under_a_tenth_of_the_time_unless_they_are_cheap(monkeypatch, preview_cost, expected):
    """100 steps of 1 s: a 2 s decode is taken every ~20 steps (k = cost / 10%), a 1 ms one at every step."""
    from blend.app import jobs
    clock = [0.0]
    monkeypatch.setattr(jobs.time, "perf_counter", lambda: clock[0])
    schedule, taken = jobs.PreviewSchedule(), 0
    for _ in range(100):
        clock[0] += 1.0                       # the step
        if schedule.after_step():
            started = clock[0]
            clock[0] += preview_cost          # the decode and the PNG
            schedule.preview_took(started)
            taken += 1
    assert taken in expected
    if preview_cost > jobs.CHEAP_PREVIEW_S:
        assert schedule.previews_time <= jobs.PREVIEW_FRACTION * schedule.steps_time + preview_cost


def test_a_job_that_does_not_reach_its_next_step_before_the_stop_times_out_still_leaves_no_folder(server, monkeypatch):
    unet, entered, gate = server.components.unet, threading.Event(), threading.Event()
    forward = type(unet).forward

    def stuck(*args, **kwargs):  # a step that outlasts the stop's wait
        entered.set()
        assert gate.wait(WAIT_S)
        return forward(unet, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", stuck)
    photo, mask = photo_and_mask()
    post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=8, samples=1)
    assert entered.wait(WAIT_S)
    server.jobs.stop(timeout=0.2)
    assert server.jobs.worker.is_alive() and list(server.out.iterdir()) == []
    gate.set()
    server.jobs.worker.join(WAIT_S)
    assert not server.jobs.worker.is_alive() and list(server.out.iterdir()) == []


def test_ranked_results_come_best_first_with_ranking_txt(server):
    photo, mask = photo_and_mask()
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=10, samples=3,
                               rank="tiny")
    assert status == 202, answer
    job = wait_for(server, answer["job"])
    assert job["state"] == "done" and len(job["results"]) == 3 and job["ranking"]
    lines = request(server, "GET", job["ranking"])[1].decode().splitlines()
    assert lines[0].startswith("# ranked by CLIP tiny") and len(lines) == 4
    distances = [float(line.split("clip_distance ")[1]) for line in lines[1:]]
    assert distances == sorted(distances)


def test_a_ninth_waiting_job_is_refused_with_503(server, monkeypatch):
    unet, gate = server.components.unet, threading.Event()
    forward = type(unet).forward

    def gated(*args, **kwargs):  # the first job's steps wait at the gate
        assert gate.wait(WAIT_S)
        return forward(unet, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", gated)
    photo, mask = photo_and_mask()
    fields = dict(image=png(photo), mask=png(mask), prompt="a cat", steps=4, samples=1)
    status, first = post_edit(server, **fields)
    assert status == 202 and wait_for(server, first["job"], states=("running",))["state"] == "running"
    statuses = [post_edit(server, **fields)[0] for _ in range(9)]  # the first is held at the gate: 8 may wait
    gate.set()
    assert statuses == [202] * 8 + [503]


def test_previews_decode_x0_through_the_autoencoder_of_the_tiny_sd_model(tiny, tmp_path):
    """The SD path (tiny: random weights, a real AutoencoderKL): x̂0 = D(x0_fg / s) at the working size, step 1 shown."""
    with running_edit_server(tiny, tmp_path / "out") as server:
        photo, mask = photo_and_mask()
        status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", steps=8, samples=1,
                                   size=64)
        assert status == 202, answer
        job = wait_for(server, answer["job"])
        assert job["state"] == "done", job
        assert job["previews"][0].endswith("/preview_001.png")
        assert fetch_image(server, job["previews"][0]).shape == (48, 64, 3)   # the 64x48 working image
        assert fetch_image(server, job["results"][0]).shape == (96, 128, 3)   # the photograph's size


@pytest.mark.processes
def test_python_m_blend_app_warns_off_loopback_and_refuses_an_unknown_model_before_loading(tmp_path):
    from blend.app.server import is_loopback
    assert all(map(is_loopback, ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.168.1.2", "::", "example.com")))
    done = subprocess.run([sys.executable, "-m", "blend.app", "--model", "no-such-model", "--host", "0.0.0.0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0].startswith("warning: listening on 0.0.0.0, not a loopback address")
    assert lines[1].startswith("error: --model no-such-model: neither a model name") and len(lines) == 2


@pytest.mark.filterwarnings("ignore:prompt 0 has")   # the worker tokenizes it again: that copy goes to stderr
def test_a_prompt_cut_at_77_tokens_is_reported_in_the_jobs_warnings(tiny, tmp_path):
    photo, mask = photo_and_mask()
    prompt = "a photograph of " + "a very small red cat, " * 20           # about 140 CLIP tokens
    with running_edit_server(tiny, tmp_path / "out") as server:
        status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt=prompt, steps=4, samples=1,
                                   size=64)
        assert status == 202, answer
        job = wait_for(server, answer["job"])
    assert job["state"] == "done", job
    assert any("CLIP holds 75 between BOS and EOS: dropped the last" in warning for warning in job["warnings"]), job


def large_blank_png(width: int, height: int) -> bytes:
    """A PNG of width × height black pixels: a few hundred kB however many pixels it has."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return png(Image.new("L", (width, height)))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_a_photograph_over_the_pixel_ceiling_is_refused_from_its_header_without_being_decoded(server, monkeypatch):
    from PIL import ImageFile
    decoded, load = [], ImageFile.ImageFile.load

    def recording_load(image):
        decoded.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    _, mask = photo_and_mask()
    big = large_blank_png(8000, 8000)                  # 64 M pixels in about 70 kB: under Pillow's own guard
    assert len(big) < MAX_UPLOAD_BYTES
    status, answer = post_edit(server, image=big, mask=png(mask), prompt="a cat", samples=2)
    assert status == 400, answer
    assert answer["error"] == ("the image file image.png is 8000x8000 pixels (64.0 megapixels); blend.app edits "
                               "photographs of at most 50.0 megapixels. Send a smaller photograph (the edit runs "
                               "at the model's working size anyway)")
    assert (8000, 8000) not in decoded and list(server.out.iterdir()) == []
    photo, _ = photo_and_mask()
    status, answer = post_edit(server, image=png(photo), mask=big, prompt="a cat")
    assert status == 400 and answer["error"].startswith("the mask file mask.png is 8000x8000 pixels"), answer


def test_samples_times_pixels_beyond_the_available_memory_are_refused_before_the_job_is_queued(server, monkeypatch):
    photo, mask = photo_and_mask()
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", samples=10**7)
    assert status == 400, answer                      # terabytes: more than any machine has
    assert answer["error"].startswith("the job would need about ") and "10000000 samples" in answer["error"]
    assert answer["error"].endswith("send fewer samples, a smaller size or a smaller photograph"), answer

    from blend.app import form
    monkeypatch.setattr(form, "available_memory", lambda: 2**30, raising=False)
    white = png(Image.new("L", (7000, 6000), 255))     # 42 M pixels, 8 results at that size: over 3 GiB
    status, answer = post_edit(server, image=large_blank_png(7000, 6000), mask=white, prompt="a cat", samples=8)
    assert status == 400, answer
    assert "8 samples of a 7000x6000 photograph" in answer["error"] and "1.0 GiB available" in answer["error"]
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", samples=2, steps=4)
    assert status == 202, answer                      # a small photograph still fits in 1 GiB
    assert wait_for(server, answer["job"])["state"] == "done"
    assert [path.name for path in server.out.iterdir()] == [answer["job"]]  # the refused ones wrote nothing


def test_an_empty_prompt_or_a_file_path_as_rank_is_refused_with_400(server, tmp_path):
    photo, mask = photo_and_mask()
    for prompt in ("", "   "):
        status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt=prompt)
        assert status == 400, answer
        assert answer["error"] == (f"the prompt is empty (got {prompt!r}): expected what the painted region should "
                                   f"become, e.g. 'a cat'. Type a prompt")
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"not read")
    status, answer = post_edit(server, image=png(photo), mask=png(mask), prompt="a cat", rank=str(weights))
    assert status == 400, answer
    assert answer["error"] == (f"--rank {weights}: expected one of the CLIP names ViT-B/16, ViT-L/14, tiny; "
                               f"blend.app reads no file named by a form. Choose one of those names, or leave rank "
                               f"empty for no ranking")
    assert list(server.out.iterdir()) == []


def test_a_new_server_removes_the_hidden_folders_a_killed_server_left_but_not_a_running_servers(toy, tmp_path,
                                                                                                 monkeypatch):
    out = tmp_path / "out"
    left = out / ".0123456789abcdef.89abcdef.partial"   # what a SIGKILLed server leaves: a job's hidden folder
    left.mkdir(parents=True)
    (left / ".preview_001.png.partial").write_bytes(b"half")
    (out / ".notes.partial").write_text("not a job's")   # anything else stays
    (out / "0123456789abcdef").mkdir()                   # a finished job stays
    with running_edit_server(toy, out) as first:
        assert sorted(path.name for path in out.iterdir()) == [".notes.partial", "0123456789abcdef"]
        unet, gate = toy.unet, threading.Event()
        forward = type(unet).forward

        def gated(*args, **kwargs):
            assert gate.wait(WAIT_S)
            return forward(unet, *args, **kwargs)

        monkeypatch.setattr(unet, "forward", gated)
        photo, mask = photo_and_mask()
        job = post_edit(first, image=png(photo), mask=png(mask), prompt="a cat", steps=4, samples=1)[1]["job"]
        assert wait_for(first, job, states=("running",))["state"] == "running"
        running = [path for path in out.iterdir() if path.name.startswith(f".{job}.")]
        with running_edit_server(toy, out):                # a second server on the same folder
            assert all(path.is_dir() for path in running) and len(running) == 1
        gate.set()
        assert wait_for(first, job)["state"] == "done"


@pytest.mark.processes
def test_python_m_blend_app_refuses_an_unusable_out_folder_or_port_before_loading_the_model(tmp_path):
    (tmp_path / "a_file").write_text("")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = {("--port", str(port)): f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose "
                                    f"another --port (0 picks a free one)",
             ("--out", str(tmp_path / "a_file" / "out")):
             f"error: --out {tmp_path / 'a_file' / 'out'}: {tmp_path / 'a_file'} is a file, not a folder; "
             f"choose another --out",
             ("--port", "70000"): "error: --port 70000: expected a port number in 0 … 65535 (0 picks a free one)"}
    for options, message in cases.items():
        done = subprocess.run([sys.executable, "-m", "blend.app", "--model", "toy", *options], cwd=tmp_path,
                              capture_output=True, text=True, timeout=WAIT_S,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [message], done.stderr
    taken.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


def test_the_memory_estimate_counts_the_packed_weights_until_the_first_job_has_made_them():
    import weights
    from blend.app import form
    from blend.cli import parse_args

    args = parse_args(["--model", "tiny", "--prompt", "a cat", "--image", "x.png", "--mask", "m.png"])
    quick, plain = weights.load("tiny"), weights.load("tiny", fast=False)
    assert plain.packing_bytes() == 0
    extra = quick.packing_bytes()
    from fast.transform import onednn_can_prepack
    assert extra > 0 or not onednn_can_prepack()
    with_packing, without = form.job_memory((64, 64), args, quick), form.job_memory((64, 64), args, plain)
    assert with_packing[1] - without[1] == extra and with_packing[0] == without[0]
