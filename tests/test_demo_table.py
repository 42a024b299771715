"""The demo's table (llava.tools.demo_table): questions read from MME's layout, answers scored with MME's rule,
kept counts from the prune trace, batched answers equal to one-at-a-time ones."""

import os

import pytest
import torch

from entropyprune.config import PruneConfig
from llava.decoding import decode_answer
from llava.tools import demo_table as T


@pytest.fixture(scope="module")
def mme_dir(tmp_path_factory):
    from llava.tools.make_synthetic_data import make_mme

    base = str(tmp_path_factory.mktemp("synthetic"))
    make_mme(base, seed=0, m=2, hashes={})
    return os.path.join(base, "MME", "MME_Benchmark_release_version")


def test_questions_come_from_the_txt_files(mme_dir):
    qs = T.load_questions(mme_dir)
    assert len(qs) == 5 * 2 * 2  # five subtasks, two images each, one Yes and one No question per image
    by_image = {}
    for q in qs:
        by_image.setdefault(q.image, []).append(q.answer)
        assert not q.text.endswith("Please answer yes or no.")
    assert all(sorted(a) == ["no", "yes"] for a in by_image.values())
    first = qs[0]
    line = open(first.image[:-4] + ".txt", encoding="utf-8").readline()
    assert line.startswith(first.text + " Please answer yes or no.\t")


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MME folder"):
        T.load_questions(str(tmp_path / "missing"))
    (tmp_path / "color").mkdir()
    with pytest.raises(ValueError, match="no questions"):
        T.load_questions(str(tmp_path))
    (tmp_path / "color" / "0000.txt").write_text("Is it red?\tYes\n")
    with pytest.raises(FileNotFoundError, match="has no image"):
        T.load_questions(str(tmp_path))
    (tmp_path / "color" / "0000.png").write_bytes(b"")
    (tmp_path / "color" / "0000.txt").write_text("Is it red?\tMaybe\n")
    with pytest.raises(ValueError, match=r"0000.txt:1: expected"):
        T.load_questions(str(tmp_path))


def test_mme_release_layouts_are_read(tmp_path):
    # The real release: .jpg beside the .txt for some subtasks, images/ + questions_answers_YN/ for others.
    from PIL import Image

    (tmp_path / "color").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "color" / "000000028993.jpg")
    (tmp_path / "color" / "000000028993.txt").write_text(
        "Is the car red? Please answer yes or no.\tYes\nIs the car blue? Please answer yes or no.\tNo\n")
    (tmp_path / "artwork" / "images").mkdir(parents=True)
    (tmp_path / "artwork" / "questions_answers_YN").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "artwork" / "images" / "10002.jpg")
    (tmp_path / "artwork" / "questions_answers_YN" / "10002.txt").write_text("Is this a painting?\tyes\n")
    qs = T.load_questions(str(tmp_path))
    assert [(q.category, os.path.relpath(q.image, tmp_path), q.text, q.answer) for q in qs] == [
        ("artwork", os.path.join("artwork", "images", "10002.jpg"), "Is this a painting?", "yes"),
        ("color", os.path.join("color", "000000028993.jpg"), "Is the car red?", "yes"),
        ("color", os.path.join("color", "000000028993.jpg"), "Is the car blue?", "no")]
    (tmp_path / "count" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has images/ but no questions_answers_YN/"):
        T.load_questions(str(tmp_path))


def test_scores_by_hand():
    qs = [T.Question("color", "a.png", "q1", "yes"), T.Question("color", "a.png", "q2", "no"),
          T.Question("count", "b.png", "q3", "yes"), T.Question("count", "b.png", "q4", "no")]
    # MME's parser: "No." -> no, "yes, it is" -> yes, "maybe" -> other (wrong either way)
    acc, acc_plus, per_cat = T._score(qs, ["Yes", "No.", "yes, it is", "maybe"])
    assert acc == 75.0 and acc_plus == 50.0 and per_cat == {"color": 100.0, "count": 50.0}


def test_rows_on_the_tiny_model(loaded_tiny, mme_dir):
    tokenizer, model, processor, _ = loaded_tiny
    qs = T.load_questions(mme_dir)[:6]
    rows = T.prepare(qs, tokenizer, processor, model.config)
    vanilla = T.run_row(model, tokenizer, qs, rows, "vanilla", None, batch_size=4)
    # batched answers equal the answers of each question alone
    alone = []
    for r in rows:
        with torch.inference_mode():
            out = model.generate(r.input_ids[None], images=r.pixels, image_sizes=r.image_sizes, max_new_tokens=3,
                                 eos_token_id=tokenizer.eos_token_id)
        ids = out[0].tolist()
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in ids else ids
        alone.append(decode_answer(tokenizer, ids))
    assert vanilla.answers == alone
    right = sum(T.parse_pred(a.strip()) == q.answer for q, a in zip(qs, alone, strict=True))
    assert vanilla.accuracy == pytest.approx(100 * right / len(qs))
    assert vanilla.kept is None and vanilla.prefill_ms > 0
    L, V = model.config.num_hidden_layers, 576
    pruned = T.run_row(model, tokenizer, qs, rows, "entropy", PruneConfig(method="entropy", layer=1, keep=64),
                       batch_size=4)
    assert pruned.kept == 64 and pruned.avg_tokens == pytest.approx((1 * V + (L - 1) * 64) / L)
    vision = T.run_row(model, tokenizer, qs, rows, "random", PruneConfig(method="random", layer=0, keep=64),
                       batch_size=4)
    assert vision.kept == 64 and vision.avg_tokens == 64
    assert model.get_model().prune is None  # the row leaves the model unpruned
    table = T.format_table([vanilla, pruned, vision], V)
    lines = table.splitlines()
    assert lines[0].startswith("| method | kept | avg | accuracy | acc+ |") and len(lines) == 5
    assert lines[3].startswith("| entropy | 64 | 192 |")
    assert lines[2].endswith(" | 1.00x |")


def test_demo_prints_the_table(tiny_llava, mme_dir, capsys):
    from llava.tools import demo

    demo.main(["--model-path", tiny_llava, "--mme-dir", mme_dir, "--limit", "4", "--budgets", "64",
               "--methods", "random,entropy", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "| vanilla | 576 | 576 |" in out
    # random runs where the in-LM methods run (their control); (1 * 576 + 3 * 64) / 4 = 192 on average
    assert "| random@64 (K=1) | 64 | 192 |" in out and "| entropy@64 (K=1) | 64 | 192 |" in out
    assert "example:" in out


def test_demo_without_a_question_set_answers_one_question(tiny_llava, capsys):
    from llava.tools import demo

    demo.main(["--model-path", tiny_llava, "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert "question: What shapes are in the image?" in out and "      vanilla: " in out
    assert "[kept 166 of 576 visual tokens after layer 2]" in out
