"""blend/batch.py and blend/manifest.py: `python -m blend.batch` alone and under torchrun (gloo, CPU), on the toy."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blend.batch import main
from blend.cli import EXAMPLE_IMAGE
from blend.manifest import ManifestError, default_seed, read_manifest

REPOSITORY = Path(__file__).resolve().parent.parent
TOY_EDIT = ["--model", "toy", "--steps", "8", "--samples", "2", "--size", "32"]
GOOD = {"cat-1": 2, "cat-2": 2, "brick": 2, "rocket": 2, "grass": 1}   # id: results


def write_inputs(folder: Path) -> Path:
    """A 48×48 photograph, a mask, an unreadable 'image' and a manifest of the GOOD items and one broken one."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((48, 48), Image.LANCZOS).save(folder / "photo.png")
    mask = np.zeros((48, 48), np.uint8)
    mask[10:34, 12:36] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "broken.png").write_text("not an image")
    lines = [
        {"id": "cat-1", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "seed": 7},
        {"id": "cat-2", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "seed": 7},  # the other rank
        {"id": "brick", "image": "photo.png", "mask": "mask.png", "prompt": "bricks"},
        {"id": "broken", "image": "broken.png", "mask": "mask.png", "prompt": "a cat"},
        {"id": "rocket", "image": str(folder / "photo.png"), "mask": "mask.png", "prompt": "a rocket",
         "guidance": 2.0},
        {"id": "grass", "image": "photo.png", "mask": "mask.png", "prompt": "grass", "samples": 1},
    ]
    manifest = folder / "edits.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def batch(manifest: Path, out: Path, *options, processes: int | None = None,
          gpus: bool = False) -> subprocess.CompletedProcess:
    """python -m blend.batch, alone or under torchrun with `processes` processes (gloo on the CPU, nccl on GPUs)."""
    launcher = [] if processes is None else ["-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", str(processes)]
    # One thread per process in every run: float sums in another thread order could move the last
    # bits, and this compares bytes across runs (torchrun itself sets 1 thread per process).
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if gpus else {"CUDA_VISIBLE_DEVICES": ""})}
    command = [sys.executable, *launcher, "-m", "blend.batch", str(manifest), "--out", str(out), *options]
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)


def summary_of(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stdout.splitlines() if line.startswith("blend.batch:")]
    assert len(lines) == 1, f"expected one summary line from rank 0:\n{run.stdout}\n{run.stderr}"
    return lines[0]


def files_of(out: Path) -> dict:
    """{relative path: (inode, mtime_ns, bytes)} of every file under `out`."""
    return {str(path.relative_to(out)): (path.stat().st_ino, path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(out.rglob("*")) if path.is_file()}


def assert_whole(out: Path, item_id: str, results: int, ranked: bool = True):
    folder = out / item_id
    expected = {f"result_{k}.png" for k in range(results)} | {"grid.png"} | ({"ranking.txt"} if ranked else set())
    assert {path.name for path in folder.iterdir()} == expected
    for name in expected - {"ranking.txt"}:
        with Image.open(folder / name) as image:
            image.load()                                   # a truncated PNG fails here
    if ranked:
        ranking = (folder / "ranking.txt").read_text().splitlines()
        assert ranking[0].startswith("#") and len(ranking) == results + 1
        distances = [float(line.split("clip_distance")[1]) for line in ranking[1:]]
        assert [line.split()[0] for line in ranking[1:]] == [f"result_{k}.png" for k in range(results)]
        assert distances == sorted(distances)              # best (lowest) first


@pytest.mark.processes
def test_batch_under_torchrun_two_processes_writes_each_item_whole_resumes_and_matches_one_process(tmp_path):
    manifest = write_inputs(tmp_path / "in")
    two, one = tmp_path / "two", tmp_path / "one"

    first = batch(manifest, two, *TOY_EDIT, "--rank", "tiny", processes=2)
    print(summary_of(first))  # shown with pytest -s: the two-process run's summary
    assert first.returncode == 1, first.stderr                           # one item failed
    assert "6 items: 5 done, 0 skipped, 1 failed" in summary_of(first) and "on 2 processes" in summary_of(first)
    assert "[rank 0/2]" in first.stderr and "[rank 1/2]" in first.stderr  # a progress line per process
    for item_id, results in GOOD.items():
        assert_whole(two, item_id, results)
    failures = [json.loads(line) for line in (two / "failures.jsonl").read_text().splitlines()]
    assert [failure["id"] for failure in failures] == ["broken"] and "broken.png" in failures[0]["error"]
    assert sorted(path.name for path in two.iterdir()) == sorted([*GOOD, "failures.jsonl"])  # no partials
    # Items 0 and 1 (ranks 0 and 1) have the same inputs and seed: the same bytes, whichever rank ran them.
    assert (two / "cat-1" / "result_0.png").read_bytes() == (two / "cat-2" / "result_0.png").read_bytes()
    assert (two / "cat-1" / "result_0.png").read_bytes() != (two / "brick" / "result_0.png").read_bytes()

    written = files_of(two)
    second = batch(manifest, two, *TOY_EDIT, "--rank", "tiny", processes=2)
    assert second.returncode == 1, second.stderr
    assert "6 items: 0 done, 5 skipped, 1 failed" in summary_of(second)
    after = files_of(two)
    assert {name: value for name, value in after.items() if name != "failures.jsonl"} == \
           {name: value for name, value in written.items() if name != "failures.jsonl"}   # nothing rewritten
    assert [json.loads(line)["id"] for line in (two / "failures.jsonl").read_text().splitlines()] == ["broken"]

    alone = batch(manifest, one, *TOY_EDIT, "--rank", "tiny")
    assert alone.returncode == 1 and "6 items: 5 done" in summary_of(alone) and "on 1 process," in summary_of(alone)
    assert {name: value[2] for name, value in files_of(one).items()} == \
           {name: value[2] for name, value in written.items()}                           # the same bytes


@pytest.mark.processes
def test_batch_killed_mid_way_leaves_no_half_written_item_and_resumes(tmp_path):
    folder = tmp_path / "in"
    manifest = write_inputs(folder)
    items = [{"id": f"cat-{n}", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"} for n in range(12)]
    manifest.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "out"
    options = ["--model", "toy", "--steps", "100", "--samples", "2", "--size", "48"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "blend.batch", str(manifest), "--out", str(out), *options],
                               cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and not (out / "cat-2").exists():
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed mid-way"
        process.send_signal(signal.SIGKILL)                 # no chance to clean up
        process.wait(timeout=60)
    finally:
        process.kill()
    visible = [path for path in out.iterdir() if not path.name.startswith(".")]
    assert 3 <= len(visible) < len(items)
    for path in visible:
        assert_whole(out, path.name, 2, ranked=False)       # every item folder there is whole
    kept = files_of(out)
    (out / ".cat-11.0123abcd.partial").mkdir()              # as a kill during a write leaves it

    resumed = subprocess.run([sys.executable, "-m", "blend.batch", str(manifest), "--out", str(out), *options],
                             cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"12 items: {12 - len(visible)} done, {len(visible)} skipped, 0 failed" in summary_of(resumed)
    assert sorted(path.name for path in out.iterdir()) == sorted(item["id"] for item in items)  # no partial left
    for item in items:
        assert_whole(out, item["id"], 2, ranked=False)
    assert {name: files_of(out)[name] for name in kept} == kept  # finished items untouched


@pytest.mark.processes
def test_batch_stops_on_sigterm_with_status_130_and_nothing_written(tmp_path):
    manifest = write_inputs(tmp_path / "in")
    manifest.write_text(json.dumps({"id": "slow", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}) + "\n")
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "blend.batch", str(manifest), "--out", str(out), "--model",
                                "toy", "--steps", "999", "--start", "0", "--samples", "256", "--size", "48"],
                               cwd=REPOSITORY, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None and not out.exists():
            time.sleep(0.01)
        time.sleep(3)  # into the item (model loading and the loop)
        process.send_signal(signal.SIGTERM)                 # what torchrun sends its workers
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert list(out.iterdir()) == []


def test_batch_interrupted_while_writing_removes_the_partial_folder(tmp_path, monkeypatch, capsys):
    import blend.batch

    manifest = write_inputs(tmp_path / "in")
    out = tmp_path / "out"

    def write_one_then_interrupt(folder, image, mask, results, rank):
        results[0].save(folder / "result_0.png")
        raise KeyboardInterrupt
    monkeypatch.setattr(blend.batch, "write_results", write_one_then_interrupt)
    assert main([str(manifest), "--out", str(out), *TOY_EDIT]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(out.iterdir()) == []                                  # no item folder, no hidden partial


def test_batch_result_depends_on_the_seed_and_the_line_options(tmp_path, capsys):
    manifest = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), *TOY_EDIT]) == 1
    assert (out / "rocket").is_dir() and not (out / "rocket" / "ranking.txt").exists()
    assert len(list((out / "grass").glob("result_*.png"))) == 1           # "samples": 1 on its line
    # The same prompt and inputs with the id's default seed against seed 7: other noise, other results.
    line = {"id": "cat-3", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}
    manifest.write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "cat-4", "seed": 7}) + "\n")
    assert main([str(manifest), "--out", str(out), *TOY_EDIT]) == 0
    assert (out / "cat-4" / "result_0.png").read_bytes() == (out / "cat-1" / "result_0.png").read_bytes()
    assert (out / "cat-3" / "result_0.png").read_bytes() != (out / "cat-1" / "result_0.png").read_bytes()
    assert "2 items: 2 done, 0 skipped, 0 failed" in capsys.readouterr().out


def test_batch_redo_replaces_each_folder_whole(tmp_path, capsys):
    manifest = write_inputs(tmp_path / "in")
    manifest.write_text(json.dumps({"id": "cat", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}) + "\n")
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), *TOY_EDIT]) == 0
    before = files_of(out)
    (out / "cat" / "stale.txt").write_text("from an older run")
    assert main([str(manifest), "--out", str(out), *TOY_EDIT, "--redo"]) == 0
    after = files_of(out)
    assert sorted(after) == sorted(before)                            # the old folder went whole
    assert all(after[name][2] == before[name][2] for name in before)  # the same seed: the same bytes
    assert all(after[name][0] != before[name][0] for name in before)  # written anew
    assert sorted(path.name for path in out.iterdir()) == ["cat"]


@pytest.mark.processes
def test_default_seed_is_sha256_of_the_id_stable_across_processes():
    assert default_seed("cat-01") == int.from_bytes(hashlib.sha256(b"cat-01").digest()[:8], "big")
    assert default_seed("cat-01") == 748934552734970733                # the same in every run
    probe = "from blend.manifest import default_seed; print(default_seed('cat-01'))"
    other = subprocess.run([sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(hash("cat-01") % 2**32 + 1)})
    assert other.stdout.strip() == str(default_seed("cat-01"))        # not Python's salted hash()


@pytest.mark.parametrize("line, expected", [
    ("not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    ('{"id": "a", "image": "photo.png", "prompt": "a cat"}', "line 2: missing 'mask'"),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": 3}', 'line 2: "prompt": expected a string'),
    ('{"id": "../a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}', 'line 2: "id": "../a" cannot'),
    ('{"id": ".a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}', 'line 2: "id": ".a" cannot'),
    ('{"id": "ok", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}', "line 2: the id 'ok' is already"),
    ('{"id": "OK", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}', "line 2: the id 'OK' is already"),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "model": "sd-1.5"}',
     "line 2: unknown key(s) 'model'"),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "steps": 0}',
     'line 2: "steps": 0: expected at least 1'),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "guidance": NaN}',
     'line 2: "guidance": NaN: expected a finite number'),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "start": 1.0}',
     'line 2: "start": 1.0: expected the fraction'),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "seed": -1}',
     'line 2: "seed": -1: expected at least 0'),
    ('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "shrink": 1}',
     'line 2: "shrink": expected true or false'),
])
def test_a_bad_manifest_line_is_refused_with_its_number_before_any_work(tmp_path, capsys, line, expected):
    folder = tmp_path / "in"
    write_inputs(folder)
    manifest = folder / "bad.jsonl"
    good = '{"id": "ok", "image": "photo.png", "mask": "mask.png", "prompt": "a cat"}'
    manifest.write_text(f"{good}\n{line}\n\n{good.replace('ok', 'fine')}\n")
    out = tmp_path / "out"
    assert main([str(manifest), "--out", str(out), *TOY_EDIT]) == 2
    error = capsys.readouterr().err
    assert f"error: {manifest} {expected}" in error, error
    assert not out.exists()                                           # nothing made, nothing loaded


def test_manifest_reports_every_bad_line_and_takes_paths_from_its_folder(tmp_path):
    folder = write_inputs(tmp_path / "in").parent
    manifest = folder / "two-bad.jsonl"
    manifest.write_text('{"id": "a"}\n{"id": "b", "image": "photo.png", "mask": "mask.png", "prompt": "cat"}\nx\n')
    with pytest.raises(ManifestError) as raised:
        read_manifest(manifest, {"steps": 8}, model="toy")
    assert [problem.split(":")[0] for problem in raised.value.problems] == [f"{manifest} line 1", f"{manifest} line 3"]
    manifest.write_text('{"id": "b", "image": "photo.png", "mask": "/m.png", "prompt": "cat", "guidance": 2}\n')
    (item,) = read_manifest(manifest, {"steps": 8, "guidance_scale": None}, model="toy")
    assert (item.image, item.mask, item.seed) == (folder / "photo.png", Path("/m.png"), default_seed("b"))
    assert item.options == {"steps": 8, "guidance_scale": 2}


def test_batch_refuses_bad_command_line_options_and_an_empty_manifest(tmp_path, capsys):
    manifest = write_inputs(tmp_path / "in")
    assert main([str(manifest), "--out", str(tmp_path / "out"), "--model", "toy", "--steps", "0"]) == 2
    assert "error: --steps 0: expected at least 1" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main([str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out"), "--model", "toy"]) == 2
    assert "the manifest has no items" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"), "--model", "toy"]) == 2
    assert "cannot read the manifest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_refuses_more_processes_per_machine_than_gpus(monkeypatch):
    import torch

    from blend.batch import Process, choose_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    device, problem = choose_device(Process(rank=5, world_size=6, local_rank=2, launched=True))
    assert device is None
    assert "LOCAL_RANK 2" in problem and "2 GPU(s)" in problem and "--nproc_per_node 2" in problem
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(Process(local_rank=3)) == (torch.device("cpu"), None)   # no GPUs: the CPU, any rank


@pytest.mark.processes
@pytest.mark.gpu
def test_batch_under_torchrun_on_gpus_uses_nccl_and_resumes(tmp_path):
    import torch

    manifest = write_inputs(tmp_path / "in")
    out, processes = tmp_path / "out", min(torch.cuda.device_count(), 2)
    first = batch(manifest, out, *TOY_EDIT, processes=processes, gpus=True)
    assert first.returncode == 1 and "6 items: 5 done, 0 skipped, 1 failed" in summary_of(first), first.stderr
    for item_id, results in GOOD.items():
        assert_whole(out, item_id, results, ranked=False)
    second = batch(manifest, out, *TOY_EDIT, processes=processes, gpus=True)
    assert "6 items: 0 done, 5 skipped, 1 failed" in summary_of(second), second.stderr


@pytest.mark.processes
def test_batch_under_torchrun_prints_a_bad_manifest_line_once_and_makes_nothing(tmp_path):
    folder = tmp_path / "in"
    write_inputs(folder)
    manifest = folder / "bad.jsonl"
    manifest.write_text('{"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat", "steps": 0}\n')
    run = batch(manifest, tmp_path / "out", *TOY_EDIT, processes=2)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f'error: {manifest} line 1: "steps": 0: expected at least 1'], run.stderr  # local rank 0's
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, blocker", [("f/res", "f"), ("f/a/b", "f")])
def test_batch_out_under_a_file_names_that_file_not_the_out_path(tmp_path, capsys, out, blocker):
    manifest = write_inputs(tmp_path / "in")
    (tmp_path / "f").write_text("a file")
    assert main([str(manifest), "--out", str(tmp_path / out), *TOY_EDIT]) == 2
    error = capsys.readouterr().err
    assert f"error: --out {tmp_path / out}: expected a folder for the results: {tmp_path / blocker} is a file" in error
    assert main([str(manifest), "--out", str(tmp_path / "f"), *TOY_EDIT]) == 2
    assert f"error: --out {tmp_path / 'f'}: expected a folder for the results, found a file" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "a file"


def test_a_manifest_with_a_bom_crlf_a_raw_line_separator_and_no_final_newline_is_read_as_json_lines(tmp_path):
    folder = write_inputs(tmp_path / "in").parent
    manifest = folder / "notepad.jsonl"
    lines = [json.dumps({"id": "a", "image": "photo.png", "mask": "mask.png", "prompt": "a cat\u2028on a mat"},
                        ensure_ascii=False),                      # U+2028 is allowed raw inside a JSON string
             "", json.dumps({"id": "b", "image": "photo.png", "mask": "mask.png", "prompt": "a dog"})]
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))   # BOM, CRLF, no final newline
    items = read_manifest(manifest, {}, model="toy")
    assert [(item.line, item.id, item.prompt) for item in items] == [(1, "a", "a cat\u2028on a mat"), (3, "b", "a dog")]


def test_a_manifest_that_is_not_utf8_or_is_a_folder_is_named_in_one_line(tmp_path, capsys):
    manifest = write_inputs(tmp_path / "in")
    manifest.write_bytes(manifest.read_bytes().replace(b'"a cat"', b'"a caf\xe9"'))   # Latin-1
    for path, expected in ((manifest, "is not UTF-8 text (byte 0xe9 on line 1); expected a UTF-8 JSON Lines"),
                           (manifest.parent, "is a folder; expected a UTF-8 JSON Lines")):
        assert main([str(path), "--out", str(tmp_path / "out"), *TOY_EDIT]) == 2
        error = capsys.readouterr().err
        assert error == f"error: the manifest {path} {expected} file, one edit per line" + (
            ": save it as UTF-8\n" if path == manifest else "\n")
    assert not (tmp_path / "out").exists()
