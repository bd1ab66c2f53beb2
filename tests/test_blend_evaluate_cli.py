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
