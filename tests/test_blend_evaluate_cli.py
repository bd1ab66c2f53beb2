"""python -m blend.evaluate: end to end on the toy model offline, the refusals (exit 2) and missing weights (exit 1).

The end-to-end run measures the toy: its judge is the toy's nearest photograph (blend/evaluate/judges.py)
and its LPIPS backbone has random weights, so its diversity is not a perceptual distance. What it
proves is the plumbing: make-benchmark's manifest runs as is with python -m blend.batch, and the
evaluation of two variants' folders gives Table 1 with one row each.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import blend.evaluate.evaluation as evaluation
from blend.evaluate import CLIPJudge, evaluate
from blend.evaluate.__main__ import main
from weights.toy import TOY_PHOTOS

ROOT = Path(__file__).resolve().parent.parent


def run_batch(manifest: Path, out: Path, *options):
    command = [sys.executable, "-m", "blend.batch", str(manifest), "--out", str(out), "--model", "toy",
               "--samples", "3", "--steps", "10", "--rank", "tiny", *options]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.mark.processes
@pytest.mark.slow
def test_make_benchmark_then_batch_then_evaluate_gives_table_1_for_paper_and_official(tmp_path, capsys):
    manifest = tmp_path / "bench.jsonl"
    assert main(["make-benchmark", str(TOY_PHOTOS), "--n", "2", "--seed", "0", "--out", str(manifest),
                 "--classes", "toy"]) == 0
    run_batch(manifest, tmp_path / "paper")
    run_batch(manifest, tmp_path / "official", "--variant", "official")
    capsys.readouterr()
    out = tmp_path / "evaluation.json"
    assert main([str(tmp_path / "paper"), str(tmp_path / "official"), "--manifest", str(manifest), "--judge", "toy",
                 "--lpips", "random", "--lpips-size", "32", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert out.with_suffix(".md").read_text() in table
    rows = [line for line in table.splitlines() if line.startswith("| paper") or line.startswith("| official")]
    assert len(rows) == 2 and "batch precision" in table and "28.66%" in table
    for run in report["runs"]:
        assert run["inputs"] == 2 and run["results"] == 6 and run["ranked_inputs"] == 2
        assert run["batch_precision"] == 1.0       # the toy pastes a photograph of the prompt's class
        assert run["batch_diversity"] is not None and run["batch_diversity"] >= 0
        assert run["best_result_precision"] == 1.0
    assert report["settings"]["judge"].startswith("toy")


def fake_results(tmp_path: Path, prompts=("cat", "coffee"), samples=2) -> tuple:
    """A manifest and one results folder in blend.batch's layout, with random images, made without the batch."""
    rng = np.random.default_rng(1)
    tmp_path.mkdir(parents=True, exist_ok=True)
    manifest, folder = tmp_path / "bench.jsonl", tmp_path / "run"
    lines = []
    for index, prompt in enumerate(prompts):
        item = f"{index:04d}-{prompt}"
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[8:20, 4:16] = 255
        Image.fromarray(mask).save(tmp_path / f"{item}.png")
        (folder / item).mkdir(parents=True)
        for k in range(samples):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / item / f"result_{k}.png")
        lines.append(json.dumps({"id": item, "image": "x.png", "mask": f"{item}.png", "prompt": prompt}))
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, folder


def test_evaluate_refuses_missing_results_unknown_prompts_and_existing_output_with_exit_2(tmp_path, capsys,
                                                                                         monkeypatch):
    monkeypatch.setattr(evaluation, "load_judge", lambda *a, **k: pytest.fail("a model was loaded"))
    manifest, folder = fake_results(tmp_path)
    out = str(tmp_path / "e.json")
    (folder / "0001-coffee" / "result_0.png").unlink()
    (folder / "0001-coffee" / "result_1.png").unlink()
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", out]) == 2
    assert "no result_<k>.png for 1 of the manifest's 2 ids (0001-coffee)" in capsys.readouterr().err
    assert main([str(folder), "--manifest", str(manifest), "--out", out]) == 2        # ImageNet has no "coffee"
    assert "names none of the judge's 1000 classes" in capsys.readouterr().err
    assert main([str(folder), "--manifest", str(manifest), "--judge", "nope", "--out", out]) == 2
    assert "--judge 'nope'" in capsys.readouterr().err
    Path(out).write_text("{}")
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err and Path(out).read_text() == "{}"
    assert not (tmp_path / "e.md").exists()


def test_offline_missing_clip_or_vgg_weights_give_one_paragraph_before_any_work(tmp_path, capsys, offline_cache,
                                                                                monkeypatch):
    monkeypatch.setattr(evaluation, "score_input", lambda *a, **k: pytest.fail("work began before the weights"))
    manifest, folder = fake_results(tmp_path, prompts=("goldfish", "tench"))
    out = tmp_path / "e.json"
    assert main([str(folder), "--manifest", str(manifest), "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert "model.safetensors of openai/clip-vit-large-patch14" in message and "the judge of precision" in message
    assert "HF_HUB_OFFLINE is set" in message and "--judge DIR/model.safetensors" in message
    manifest, folder = fake_results(tmp_path / "toy", prompts=("cat",))
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert "model.safetensors of timm/vgg16.tv_in1k" in message and "--lpips random" in message
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_evaluate_scores_with_a_built_judge_and_a_tiny_clip_judge_is_zero_shot_over_the_template(tmp_path):
    from weights import load_clip
    manifest, folder = fake_results(tmp_path, prompts=("cat", "dog"), samples=3)
    model = load_clip("tiny")
    judge = CLIPJudge(model, ["cat", "dog", "bird"])
    report = evaluate([folder], manifest, judge_model=judge, lpips="random", lpips_size=32)
    run = report["runs"][0]
    assert run["results"] == 6 and run["best_result_precision"] is None and run["ranked_inputs"] == 0
    for record in run["per_input"]:
        results = torch.stack([torch.from_numpy(np.array(Image.open(folder / record["id"] / name))).permute(2, 0, 1)
                               for name in record["results"]]).float() / 127.5 - 1
        top, left, height, width = record["box"]
        with torch.no_grad():
            image = model.image_embeddings(results[:, :, top:top + height, left:left + width])
            text = model.text_embeddings(["a photo of a cat", "a photo of a dog", "a photo of a bird"])
        expected = [["cat", "dog", "bird"][i] for i in (image @ text.T).argmax(dim=1).tolist()]
        assert record["top1"] == expected
        assert record["hits"] == [name == record["class"] for name in expected]
    assert run["batch_precision"] == sum(h for r in run["per_input"] for h in r["hits"]) / 6


def test_a_prompt_names_its_class_alone_or_after_an_article_or_the_template():
    from blend.evaluate.evaluation import class_of
    names = ["tench", "great white shark", "Egyptian cat"]
    assert class_of("great white shark", names) == "great white shark"
    assert class_of("A Great White Shark", names) == "great white shark"
    assert class_of("an egyptian cat", names) == "Egyptian cat"
    assert class_of("a photo of a tench", names) == "tench"
    assert class_of("a shark", names) is None and class_of("tench in a pond", names) is None


def test_the_table_shows_a_dash_for_numbers_that_were_not_measured(tmp_path):
    from blend.evaluate import markdown_table, write_report
    manifest, folder = fake_results(tmp_path, prompts=("cat",), samples=1)
    report = evaluate([folder], manifest, judge="toy", lpips="random", lpips_size=32, names=["one result"])
    run = report["runs"][0]
    assert run["batch_diversity"] is None and run["best_result_precision"] is None     # one result, not ranked
    row = next(line for line in markdown_table(report).splitlines() if line.startswith("| one result"))
    assert row.endswith("| – | – | 1 | 1 |")
    json_path, table_path = write_report(report, tmp_path / "r.json")
    assert json.loads(json_path.read_text()) == report and table_path.read_text() == markdown_table(report)
    with pytest.raises(FileExistsError):
        write_report(report, tmp_path / "r.json")


def test_allow_missing_scores_the_ids_that_have_results(tmp_path):
    manifest, folder = fake_results(tmp_path, prompts=("cat", "coffee", "grass"))
    for path in (folder / "0001-coffee").iterdir():
        path.unlink()
    report = evaluate([folder], manifest, judge="toy", lpips="random", lpips_size=32, allow_missing=True)
    assert [record["id"] for record in report["runs"][0]["per_input"]] == ["0000-cat", "0002-grass"]


def test_rank_orders_unranked_results_for_best_result_precision_as_blend_rank_does(tmp_path):
    from blend import rank
    from weights import load_clip
    manifest, folder = fake_results(tmp_path, prompts=("cat", "grass"), samples=3)
    report = evaluate([folder], manifest, judge="toy", lpips="random", lpips_size=32, rank="tiny")
    run = report["runs"][0]
    assert run["ranked_inputs"] == 2 and run["best_result_precision"] is not None
    for record in run["per_input"]:
        images = [Image.open(folder / record["id"] / name) for name in record["results"]]
        order, _ = rank(images, record["prompt"], tmp_path / f"{record['id']}.png", ranker=load_clip("tiny"))
        assert record["best"] == record["results"][order[0]] and record["ranked_by"] == "CLIP tiny"
    assert run["best_result_precision"] == sum(r["best_hit"] for r in run["per_input"]) / 2


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: every refusal must come before the judge and LPIPS load."""
    monkeypatch.setattr(evaluation, "load_judge", lambda *a, **k: pytest.fail("the judge was loaded"))
    monkeypatch.setattr(evaluation, "load_lpips", lambda *a, **k: pytest.fail("LPIPS was loaded"))


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage, named, expected", [
    (lambda folder, tmp: truncate(folder / "0001-coffee" / "result_1.png"), "run/0001-coffee/result_1.png",
     "cannot read this result of '0001-coffee' as an image"),
    (lambda folder, tmp: (tmp / "0000-cat.png").write_text("not a png"), "0000-cat.png", "cannot read the mask file"),
    (lambda folder, tmp: Image.new("L", (32, 32), 0).save(tmp / "0000-cat.png"), "0000-cat.png", "the mask is empty"),
    (lambda folder, tmp: Image.new("RGB", (40, 32)).save(folder / "0000-cat" / "result_1.png"), "run/0000-cat",
     "the results differ in size (32x32, 40x32)"),
    (lambda folder, tmp: (folder / "0000-cat" / "ranking.txt").write_bytes(b"# ranked\nresult_1.png \xff\n"),
     "ranking.txt", "is not UTF-8 text"),
])
def test_an_unreadable_result_or_mask_or_an_empty_mask_is_refused_naming_it_before_any_model_loads(
        tmp_path, capsys, no_models, damage, named, expected):
    manifest, folder = fake_results(tmp_path)
    damage(folder, tmp_path)
    out = tmp_path / "e.json"
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and named in error and expected in error, error
    assert "Traceback" not in error and not out.exists() and not out.with_suffix(".md").exists()


@pytest.mark.parametrize("field, value", [("mask", 3), ("prompt", None), ("prompt", ["cat"]), ("id", 7)])
def test_a_manifest_field_that_is_not_a_string_is_refused_with_its_line_and_name(tmp_path, capsys, no_models,
                                                                                field, value):
    manifest, folder = fake_results(tmp_path)
    lines = manifest.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), field: value})
    manifest.write_text("\n".join(lines) + "\n")
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(tmp_path / "e.json")]) == 2
    assert f'line 2: "{field}": expected a non-empty string, found {json.dumps(value)}' in capsys.readouterr().err


def test_lpips_sizes_below_16_are_refused_before_any_model_loads_and_16_is_the_least_vgg_takes(tmp_path, capsys,
                                                                                              no_models):
    from blend.evaluate import LPIPS
    manifest, folder = fake_results(tmp_path)
    for size in ("1", "15", "-1"):
        assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--lpips-size", size,
                     "--out", str(tmp_path / "e.json")]) == 2
        assert "expected 0 (the crops as they are) or a side of at least 16 pixels" in capsys.readouterr().err
    lpips = LPIPS().eval()
    with torch.no_grad():
        assert lpips(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)).shape == (1,)
        with pytest.raises(RuntimeError):
            lpips(torch.zeros(1, 3, 15, 16), torch.ones(1, 3, 15, 16))
    # --lpips-size 0 keeps the crops, 14x14 here (a 12x12 mask padded by 10%): refused, naming the mask
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--lpips-size", "0",
                 "--out", str(tmp_path / "e.json")]) == 2
    assert "the crop of '0000-cat' is 14x14, smaller than the 16x16 that LPIPS needs" in capsys.readouterr().err


def test_a_manifest_with_a_bom_crlf_a_raw_line_separator_and_no_final_newline_is_read_as_json_lines(tmp_path):
    manifest, folder = fake_results(tmp_path, prompts=("cat", "grass"))
    lines = manifest.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "note": "a\u2028b"}, ensure_ascii=False)   # JSON allows it raw
    manifest.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
    report = evaluate([folder], manifest, judge="toy", lpips="random", lpips_size=32)
    assert [record["id"] for record in report["runs"][0]["per_input"]] == ["0000-cat", "0001-grass"]


def test_a_manifest_that_is_not_utf8_or_is_a_folder_is_named_in_one_line(tmp_path, capsys, no_models):
    manifest, folder = fake_results(tmp_path, prompts=("cat",))
    manifest.write_bytes(manifest.read_bytes().replace(b'"prompt": "cat"', b'"prompt": "ch\xe2t"'))   # Latin-1
    for path in (manifest, tmp_path):
        assert main([str(folder), "--manifest", str(path), "--judge", "toy", "--out", str(tmp_path / "e.json")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"the manifest {path}" in error
        assert ("is not UTF-8 text (byte 0xe2 on line 1)" if path == manifest else "is a folder") in error


@pytest.mark.parametrize("out, blocker", [("f/e.json", "f"), ("f/sub/e.json", "f")])
def test_an_out_under_a_file_names_that_file_and_an_out_folder_or_md_name_is_refused(tmp_path, capsys, no_models,
                                                                                    out, blocker):
    manifest, folder = fake_results(tmp_path)
    (tmp_path / "f").write_text("a file")
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(tmp_path / out)]) == 2
    assert f"error: --out {tmp_path / out}: {tmp_path / blocker} is a file, not a folder" in capsys.readouterr().err
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; expected the name of a file" in capsys.readouterr().err
    assert main([str(folder), "--manifest", str(manifest), "--judge", "toy", "--out", str(tmp_path / "e.md")]) == 2
    assert "expected a .json name" in capsys.readouterr().err


def test_evaluate_stopped_while_writing_leaves_nothing_and_the_next_run_finishes_a_pair_split_by_a_kill(
        tmp_path, capsys, monkeypatch):
    from blend.evaluate import report as report_module
    manifest, folder = fake_results(tmp_path, prompts=("cat",))
    options = [str(folder), "--manifest", str(manifest), "--judge", "toy", "--lpips", "random", "--lpips-size", "32"]
    real_write = Path.write_text

    def write_then_stop(path, text, *args, **kwargs):
        real_write(path, text[:10], *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(report_module.Path, "write_text", write_then_stop)
    try:
        status = main([*options, "--out", str(tmp_path / "e.json")])
    except KeyboardInterrupt:
        status = "KeyboardInterrupt escaped"
    monkeypatch.undo()
    assert status == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bench.jsonl", "run", "0000-cat.png"])
    # A kill between the two renames leaves the whole JSON and the table's hidden file: the next run renames it.
    (tmp_path / "k.json").write_text("{}")
    (tmp_path / ".k.md.incomplete").write_text("| table |\n")
    (tmp_path / ".e.json.incomplete").write_text('{"half')               # a kill while writing: removed
    assert main([*options, "--out", str(tmp_path / "k.json")]) == 2
    assert "k.json already exists" in capsys.readouterr().err
    assert (tmp_path / "k.md").read_text() == "| table |\n" and not (tmp_path / ".k.md.incomplete").exists()
    assert main([*options, "--out", str(tmp_path / "e.json")]) == 0
    assert not any(p.name.endswith(".incomplete") for p in tmp_path.iterdir())


def test_a_results_path_that_is_a_file_an_empty_row_name_and_a_missing_device_are_refused_before_any_model(
        tmp_path, capsys, no_models, monkeypatch):
    manifest, folder = fake_results(tmp_path)
    options = ["--manifest", str(manifest), "--judge", "toy", "--out", str(tmp_path / "e.json")]
    assert main([str(manifest), *options]) == 2
    assert f"{manifest}: expected a results folder written by `python -m blend.batch`, found a file" in \
        capsys.readouterr().err
    assert main([str(folder), str(folder), "--names", "a,", *options]) == 2
    assert "--names: found an empty name in 'a,'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([str(folder), "--device", "cuda", *options]) == 2
    assert "--device cuda: this machine has 0 CUDA GPU(s)" in capsys.readouterr().err
    assert main([str(folder), "--device", "gpu0", *options]) == 2
    assert "--device 'gpu0': expected cpu, cuda or cuda:N" in capsys.readouterr().err
