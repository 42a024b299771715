"""Run records on LLaVA-1.6: each image's own V, the N it kept and its average-token equivalent, written per
answer from the prune trace and aggregated by the run record (tiny `make_tiny_checkpoint --next` model).

The expected numbers are worked out by hand from the tiny model's splice (V = 74 / 78 / 90 for images of
300x20, 64x64 and 20x300, with 2 / 6 / 18 newlines: grids 2x36, 6x12, 18x4 plus a newline per row, after
the 36-token base view; tests/test_llava_next.py checks these counts against transformers) and the budget
rules of entropyprune.budget; the model has L = 4 layers.
"""

import json

import numpy as np
import pytest
from PIL import Image

from llava.model.builder import load_pretrained_model

SHAPES = [(300, 20), (64, 64), (20, 300)]
V = [74, 78, 90]
NEWLINES = [2, 6, 18]
L = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    root = tmp_path_factory.mktemp("records")
    ckpt = build(str(root / "llava-v1.6-tiny"), "llava", next_=True)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    with open(root / "q.jsonl", "w", encoding="utf-8") as f:
        for i, (w, h) in enumerate(SHAPES):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"{i}.png", "text": "What is it?"}) + "\n")
    return root, ckpt, load_pretrained_model(ckpt, device="cpu")


def _run(setup, name, *extra):
    from llava.eval import model_vqa_loader
    from llava.eval.record import build_record

    root, ckpt, loaded = setup
    answers = str(root / f"{name}.jsonl")
    try:
        model_vqa_loader.main(["--model-path", ckpt, "--question-file", str(root / "q.jsonl"), "--image-folder",
                               str(root / "images"), "--answers-file", answers, "--temperature", "0",
                               "--conv-mode", "vicuna_v1", "--max-new-tokens", "2", *extra], loaded=loaded)
    finally:
        loaded[1].set_prune(None)
    with open(answers, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return rows, build_record("textvqa", name, answers, None, None)


def _per_answer(rows, key):
    return [row["metadata"][key] for row in sorted(rows, key=lambda r: r["question_id"])]


def test_ratio_budget_is_of_each_images_own_v_and_the_record_aggregates_it(setup):
    rows, record = _run(setup, "ratio", "--prune-method", "entropy", "--prune-layer", "2", "--prune-ratio", "0.25",
                        "--batch-size", "3")
    # round(0.25 * V), halves up: 18.5 -> 19, 19.5 -> 20, 22.5 -> 23; average (K*V + (L-K)*N) / L, K = 2
    kept = [19, 20, 23]
    avg = [(2 * v + 2 * n) / L for v, n in zip(V, kept, strict=True)]
    assert _per_answer(rows, "visual_tokens") == [[v] for v in V]
    assert _per_answer(rows, "kept_tokens") == [[n] for n in kept]
    assert _per_answer(rows, "avg_tokens") == [[a] for a in avg]
    per = record["per_image"]
    assert per["images"] == 3
    assert per["visual_tokens"] == {"min": 74, "median": 78, "max": 90, "mean": sum(V) / 3}
    assert per["kept_tokens"] == {"min": 19, "median": 20, "max": 23, "mean": sum(kept) / 3}
    assert per["avg_tokens"] == {"min": 46.5, "median": 49.0, "max": 56.5, "mean": sum(avg) / 3}
    assert (record["visual_tokens"], record["keep"], record["avg_tokens"]) == (sum(V) / 3, sum(kept) / 3,
                                                                                sum(avg) / 3)
    assert record["layer"] == 2 and record["method"] == "entropy"
    meta = json.loads(open(record["answers_file"] + ".meta.json", encoding="utf-8").read())
    assert meta["per_image"] is True and meta["num_visual_tokens"] is None and meta["kept_tokens"] is None


def test_absolute_keep_and_keep_newlines(setup):
    rows, record = _run(setup, "keep", "--prune-method", "fastv", "--prune-layer", "2", "--prune-keep", "30")
    assert _per_answer(rows, "kept_tokens") == [[30]] * 3
    assert record["per_image"]["kept_tokens"] == {"min": 30, "median": 30, "max": 30, "mean": 30}
    assert record["per_image"]["avg_tokens"]["max"] == (2 * 90 + 2 * 30) / L
    # keep_newlines: 0.25 of the other tokens (72 each: 18), every newline on top
    rows, _ = _run(setup, "nl", "--prune-method", "entropy", "--prune-layer", "2", "--prune-ratio", "0.25",
                   "--prune-keep-newlines")
    assert _per_answer(rows, "kept_tokens") == [[18 + n] for n in NEWLINES]


def test_multi_stage_average_follows_every_stage(setup):
    # PDrop at layers 1, 2, 3 with ratio 0.5: stage s keeps floor(V * 0.5^s) of each image's own V
    rows, _ = _run(setup, "pdrop", "--prune-method", "pdrop", "--prune-ratio", "0.5", "--prune-option",
                   "layer_list=1,2,3")
    for v, got_kept, got_avg in zip(V, _per_answer(rows, "kept_tokens"), _per_answer(rows, "avg_tokens"),
                                    strict=True):
        n1, n2, n3 = v // 2, v // 4, v // 8
        assert got_kept == [n3]
        assert got_avg == [(v + n1 + n2 + n3) / L]


def test_without_pruning_each_image_keeps_its_v(setup):
    rows, record = _run(setup, "none")
    assert _per_answer(rows, "kept_tokens") == [[v] for v in V]
    assert record["per_image"]["avg_tokens"] == record["per_image"]["visual_tokens"]
    assert record["method"] is None and record["keep"] == sum(V) / 3


def test_the_ecl_registry_has_no_llava_next_entry(tmp_path, monkeypatch):
    from entropyprune import PruneConfig
    from entropyprune.ecl import BUILTIN_LAYERS, REGISTRY_ENV, ECLNotFoundError, resolve_auto_layer

    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "registry.json"))  # no measured entries
    assert not [name for name in BUILTIN_LAYERS if "v1.6" in name or "next" in name]
    with pytest.raises(ECLNotFoundError, match=r"^--prune-layer auto: no Entropy Collapse Layer is known for "
                                               r"'liuhaotian/llava-v1.6-vicuna-7b'"):
        resolve_auto_layer(PruneConfig(method="entropy", layer="auto", keep=320), "liuhaotian/llava-v1.6-vicuna-7b")


def test_a_budget_above_an_images_v_keeps_it_whole_and_is_counted(setup, capsys):
    # --prune-keep 80: the 300x20 (V 74) and 64x64 (V 78) images have fewer tokens, so they keep all of them
    # (capped); the 20x300 image (V 90) keeps 80. Averages (K*V + (L-K)*N) / L with K = 2.
    rows, record = _run(setup, "cap", "--prune-method", "fastv", "--prune-layer", "2", "--prune-keep", "80",
                        "--batch-size", "3")
    assert _per_answer(rows, "kept_tokens") == [[74], [78], [80]]
    assert [row["metadata"].get("capped_images", 0) for row in sorted(rows, key=lambda r: r["question_id"])] == [
        1, 1, 0]
    assert _per_answer(rows, "avg_tokens") == [[74.0], [78.0], [(2 * 90 + 2 * 80) / L]]
    assert record["per_image"]["capped_images"] == 2
    meta = json.loads(open(record["answers_file"] + ".meta.json", encoding="utf-8").read())
    assert meta["capped_images"] == 2
    err = capsys.readouterr().err
    assert err.count("warning: 2 image(s) had fewer visual tokens than the budget asks") == 1
    # a budget every image reaches caps none, and says so
    rows, record = _run(setup, "nocap", "--prune-method", "fastv", "--prune-layer", "2", "--prune-keep", "30")
    assert record["per_image"]["capped_images"] == 0
    assert "fewer visual tokens than the budget" not in capsys.readouterr().err


def test_vision_stage_methods_record_what_each_image_kept(setup):
    # DivPrune on the merged sequence: int(round(0.25 V)), Python's round: 18.5 -> 18, 19.5 -> 20, 22.5 -> 22
    rows, record = _run(setup, "divprune", "--prune-method", "divprune", "--prune-ratio", "0.25", "--batch-size", "3")
    assert _per_answer(rows, "visual_tokens") == [[v] for v in V]
    assert _per_answer(rows, "kept_tokens") == [[18], [20], [22]]
    assert _per_answer(rows, "avg_tokens") == [[18.0], [20.0], [22.0]]  # pruned before layer 0: every layer
    assert record["layer"] == 0 and record["per_image"]["kept_tokens"]["mean"] == 20
    # CDPruner per view (strip_unpad): 6 of each view's 36; 1 + 3, 1 + 2 and 1 + 3 views; V is the views' tokens
    rows, record = _run(setup, "cdpruner", "--prune-method", "cdpruner", "--prune-keep", "6", "--prune-option",
                        "strip_unpad=true", "--batch-size", "3")
    assert _per_answer(rows, "visual_tokens") == [[144], [108], [144]]
    assert _per_answer(rows, "kept_tokens") == [[24], [18], [24]]
    assert not any("truncated" in row["metadata"] for row in rows)


def test_merging_chunks_adds_their_capped_images(tmp_path):
    from llava.eval.answer_file import merge_answers

    parts = []
    for i, capped in enumerate([2, 1]):
        part = tmp_path / f"part{i}.jsonl"
        part.write_text(json.dumps({"question_id": i, "text": "a"}) + "\n", encoding="utf-8")
        meta = {"settings": {"model_path": "m"}, "questions": 1, "answers": 1, "complete": True, "per_image": True,
                "capped_images": capped}
        (tmp_path / f"part{i}.jsonl.meta.json").write_text(json.dumps(meta), encoding="utf-8")
        parts.append(str(part))
    assert merge_answers(str(tmp_path / "all.jsonl"), parts)["capped_images"] == 3
