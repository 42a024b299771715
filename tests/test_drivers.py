"""The benchmark drivers on the tiny checkpoint and the demo data: formats, prompts, resume, chunks, torchrun."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter

import pytest

from llava.eval import (
    EvalInputError,
    answer_file,
    driver,
    model_vqa,
    model_vqa_loader,
    model_vqa_mmbench,
    model_vqa_science,
    model_vqa_tsv,
    shards,
)
from llava.tools import make_demo_data
from llava.tools.demo_drawing import draw_scene, png_base64

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    make_demo_data.build(root, seed=0, mme_images=1)  # 28 MME questions: enough for every path, and quick
    return root


@pytest.fixture
def tiny(loaded_tiny):
    yield loaded_tiny
    loaded_tiny[1].set_prune(None)  # the session model goes back to vanilla for the other test files


@pytest.fixture
def prompts(monkeypatch):
    """Every full prompt the drivers build, in order."""
    seen = []
    original = driver.build_prompt

    def spy(item, conv_mode, model_config):
        prompt = original(item, conv_mode, model_config)
        seen.append(prompt)
        return prompt

    monkeypatch.setattr(driver, "build_prompt", spy)
    return seen


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def loader_args(model_path, demo, answers, bench="MME", *extra):
    files = {
        "MME": ("MME/llava_mme.jsonl", "MME/MME_Benchmark_release_version"),
        "textvqa": ("textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/train_images"),
        "mmvet": ("mm-vet/llava-mm-vet.jsonl", "mm-vet/images"),
    }[bench]
    return ["--model-path", model_path, "--question-file", os.path.join(demo, files[0]),
            "--image-folder", os.path.join(demo, files[1]), "--answers-file", str(answers),
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max-new-tokens", "3", *extra]


def check_answer_line(line, model_id="llava-v1.5-tiny", keys=ANSWER_KEYS):
    assert list(line) == keys
    assert line["metadata"] == {} and line["model_id"] == model_id
    assert isinstance(line["answer_id"], str) and len(line["answer_id"]) == 22  # shortuuid
    assert isinstance(line["text"], str)


# ------------------------------------------------------------------------------------------------ formats


def test_loader_mme_format_prompt_and_sidecar(tiny_llava, tiny, demo, tmp_path, prompts):
    # A hand-written MME question line on a demo image: the answer's prompt is the file's text, the model's
    # prompt is vicuna_v1 with the image marker line first.
    image = "existence/10000.jpg"
    text = f"Is there a dog in this image?\n{SHORT}"
    qfile = tmp_path / "q.jsonl"
    qfile.write_text(json.dumps({"question_id": image, "image": image, "text": text, "category": "existence"}) + "\n")
    answers = tmp_path / "a.jsonl"
    args = loader_args(tiny_llava, demo, answers, "MME", "--prune-method", "entropy", "--prune-keep", "166")
    args[args.index("--question-file") + 1] = str(qfile)
    model_vqa_loader.main(args, loaded=tiny)
    (line,) = read_lines(answers)
    check_answer_line(line)
    assert line["question_id"] == "existence/10000.jpg"
    assert line["prompt"] == "Is there a dog in this image?\nAnswer the question using a single word or phrase."
    assert prompts == [f"{SYSTEM} USER: <image>\nIs there a dog in this image?\n"
                       "Answer the question using a single word or phrase. ASSISTANT:"]
    trace = tiny[1].get_model().prune_trace
    assert trace[0][0][0].layer == 2 and trace[0][0][0].kept.numel() == 166

    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["complete"] is True and meta["answers"] == 1 and meta["questions"] == 1
    assert meta["method"] == "entropy" and meta["layer"] == 2 and meta["kept_tokens"] == 166
    assert meta["avg_tokens_equivalent"] == (2 * 576 + 2 * 166) / 4  # 4-layer tiny model, K=2
    assert meta["settings"]["prune"]["keep"] == 166 and meta["settings"]["max_new_tokens"] == 3


def test_loader_whole_mme_demo(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "mme.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, answers), loaded=tiny)
    lines = read_lines(answers)
    questions = read_lines(os.path.join(demo, "MME", "llava_mme.jsonl"))
    assert len(lines) == len(questions) == 14 * 2
    for line, q in zip(lines, questions, strict=True):
        check_answer_line(line)
        assert (line["question_id"], line["prompt"]) == (q["question_id"], q["text"])
        assert line["prompt"].endswith("\n" + SHORT)


def test_loader_textvqa_keeps_ocr_lines(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "tv.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, answers, "textvqa"), loaded=tiny)
    lines = read_lines(answers)
    assert len(lines) == 5
    assert lines[0]["prompt"] == ("what does the sign say?\nReference OCR token: STOP\n"
                                  "Answer the question using a single word or phrase.")
    assert lines[-1]["prompt"] == ("what shape is in the picture?\nReference OCR token: \n"
                                   "Answer the question using a single word or phrase.")
    # Two questions about one image share its question_id (the TextVQA image id), and both are answered.
    assert lines[0]["question_id"] == lines[1]["question_id"]


def test_model_vqa_mmvet_no_suffix(tiny_llava, tiny, demo, tmp_path, prompts):
    answers = tmp_path / "mmvet.jsonl"
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet"), loaded=tiny)
    lines = read_lines(answers)
    assert [line["question_id"] for line in lines] == [0, 1, 2, 3]
    check_answer_line(lines[0])
    assert lines[0]["prompt"] == "What is written on the sign?"
    assert prompts[0] == f"{SYSTEM} USER: <image>\nWhat is written on the sign? ASSISTANT:"


REQUIRED = ["--model-path", "m", "--question-file", "q.jsonl"]


def test_flags_llava_spellings_and_defaults():
    args = driver.build_parser("x", 1024).parse_args(REQUIRED)
    assert (args.max_new_tokens, args.temperature, args.conv_mode, args.num_beams) == (1024, 0.2, "llava_v1", 1)
    args = driver.build_parser("x", 128).parse_args(
        [*REQUIRED, "--top-p", "0.9", "--num_beams", "1", "--max_new_tokens", "7"])
    assert (args.top_p, args.num_beams, args.max_new_tokens) == (0.9, 1, 7)
    args = driver.build_parser("x", 128).parse_args([*REQUIRED, "--top_p", "0.5", "--num-beams", "1"])
    assert args.top_p == 0.5 and args.max_new_tokens == 128
    assert (args.batch_size, args.bucket_window) == (1, None)  # LLaVA's one question per model call
    args = driver.build_parser("x", 128).parse_args([*REQUIRED, "--batch-size", "8", "--bucket-window", "64"])
    assert (args.batch_size, args.bucket_window) == (8, 64)
    for bad in (["--batch-size", "0"], ["--bucket-window", "0"], ["--batch-size", "two"]):
        with pytest.raises(SystemExit):
            driver.build_parser("x", 128).parse_args([*REQUIRED, *bad])


def test_impossible_budget_is_one_clear_error(tiny_llava, tiny, demo, tmp_path):
    with pytest.raises(EvalInputError, match="pruning flags: --prune-keep 1000 keeps 1000 of 576"):
        model_vqa.main(loader_args(tiny_llava, demo, tmp_path / "a.jsonl", "mmvet", "--prune-method", "entropy",
                                   "--prune-keep", "1000"), loaded=tiny)


def sqa_args(model_path, demo, answers, *extra):
    return ["--model-path", model_path, "--question-file", os.path.join(demo, "scienceqa", "llava_test_CQM-A.json"),
            "--image-folder", os.path.join(demo, "scienceqa", "images", "test"), "--answers-file", str(answers),
            "--single-pred-prompt", "--temperature", "0", "--conv-mode", "vicuna_v1", "--max-new-tokens", "3",
            *extra]


def test_science_image_and_text_only_items(tiny_llava, tiny, demo, tmp_path, prompts, monkeypatch):
    images_given = []
    original = type(tiny[1]).generate

    def spy(self, inputs=None, images=None, **kw):
        images_given.append(images is not None)
        return original(self, inputs, images=images, **kw)

    monkeypatch.setattr(type(tiny[1]), "generate", spy)
    answers = tmp_path / "sqa.jsonl"
    model_vqa_science.main(sqa_args(tiny_llava, demo, answers), loaded=tiny)
    lines = read_lines(answers)
    assert [line["question_id"] for line in lines] == ["4", "11", "25", "31", "58"]
    for line in lines:
        check_answer_line(line)
    assert lines[0]["prompt"] == ("<image>\nWhich shape is shown in the picture?\nA. circle\nB. square\n"
                                  "C. triangle\nAnswer with the option's letter from the given choices directly.")
    assert lines[1]["prompt"] == ("Context: Maya has a glass of water. She puts it in the freezer.\n"
                                  "What happens to the water?\nA. It freezes.\nB. It boils.\n"
                                  "Answer with the option's letter from the given choices directly.")
    # Text-only questions are answered without an image and their prompt has no image marker.
    assert images_given == [True, False, True, False, True]
    assert ["<image>" in line["prompt"] for line in lines] == images_given
    assert prompts[1] == (f"{SYSTEM} USER: Context: Maya has a glass of water. She puts it in the freezer.\n"
                          f"What happens to the water?\nA. It freezes.\nB. It boils.\n{LETTER} ASSISTANT:")
    assert prompts[0].startswith(f"{SYSTEM} USER: <image>\nWhich shape is shown in the picture?\n")


def test_science_without_single_pred_prompt(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "sqa.jsonl"
    args = [a for a in sqa_args(tiny_llava, demo, answers) if a != "--single-pred-prompt"]
    model_vqa_science.main(args, loaded=tiny)
    lines = read_lines(answers)
    assert lines[3]["prompt"] == ("Which word would you find on a dictionary page with the guide words ant - cat?"
                                  "\nA. bee\nB. dog")


def mmbench_args(model_path, demo, answers, lang="en", *extra):
    tsv = ("mmbench/mmbench_dev_20230712.tsv" if lang == "en" else "mmbench_cn/mmbench_dev_cn_20231003.tsv")
    return ["--model-path", model_path, "--question-file", os.path.join(demo, tsv), "--answers-file", str(answers),
            "--single-pred-prompt", "--lang", lang, "--temperature", "0", "--conv-mode", "vicuna_v1",
            "--max-new-tokens", "3", *extra]


MMBENCH_KEYS = ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id",
                "metadata"]


def test_mmbench_format_and_prompts(tiny_llava, tiny, demo, tmp_path, prompts):
    answers = tmp_path / "mmb.jsonl"
    model_vqa_mmbench.main(mmbench_args(tiny_llava, demo, answers), loaded=tiny)
    lines = read_lines(answers)
    assert [line["question_id"] for line in lines] == [100, 107, 114, 1000100, 1000107, 1000114, 2000100, 2000107,
                                                       3000100]
    for line in lines:
        check_answer_line(line, keys=MMBENCH_KEYS)
        assert line["round_id"] == 0
    first = lines[0]
    assert first["prompt"] == ("The image shows one object.\nWhat shape is in the image?\nA. circle\nB. square\n"
                               "C. triangle\nD. star")
    assert first["options"] == ["circle", "square", "triangle", "star"]
    assert first["option_char"] == ["A", "B", "C", "D"]
    # No hint (empty cell) and an empty D column: no hint line and three options.
    assert lines[1]["prompt"] == "Which color is the shape?\nA. red\nB. blue\nC. green"
    assert prompts[1] == (f"{SYSTEM} USER: <image>\nWhich color is the shape?\nA. red\nB. blue\nC. green\n"
                          f"{LETTER} ASSISTANT:")


def test_mmbench_cn_all_rounds(tiny_llava, tiny, demo, tmp_path, prompts):
    answers = tmp_path / "mmb_cn.jsonl"
    model_vqa_mmbench.main(mmbench_args(tiny_llava, demo, answers, "cn", "--all-rounds"), loaded=tiny)
    lines = read_lines(answers)
    # One round per option: rows with 4, 3, 2 options, each with its circular copies.
    assert len(lines) == 4 * 4 + 3 * 3 + 2 * 2
    rounds = [line for line in lines if line["question_id"] == 100]
    assert [r["round_id"] for r in rounds] == [0, 1, 2, 3]
    assert rounds[1]["options"] == ["正方形", "三角形", "星形", "圆形"]
    assert rounds[1]["option_char"] == ["B", "C", "D", "A"]
    assert rounds[1]["prompt"] == "图中只有一个物体。\n图中是什么形状？\nA. 正方形\nB. 三角形\nC. 星形\nD. 圆形"
    assert prompts[1] == (f"{SYSTEM} USER: <image>\n图中只有一个物体。\n图中是什么形状？\nA. 正方形\nB. 三角形\n"
                          "C. 星形\nD. 圆形\n请直接回答选项字母。 ASSISTANT:")


def test_mmbench_is_none_follows_pandas():
    for missing in (None, "", "nan", "NaN", "None", "none", "N/A", "NULL"):
        assert model_vqa_mmbench.is_none(missing)
    for present in ("0", "no", "Nan cat", " "):
        assert not model_vqa_mmbench.is_none(present)
    assert model_vqa_mmbench.get_options({"A": "x", "B": "y", "C": "nan", "D": "z"}) == ["x", "y"]


def tsv_args(model_path, tsv, answers, *extra):
    return ["--model-path", model_path, "--question-file", str(tsv), "--answers-file", str(answers),
            "--temperature", "0", "--conv-mode", "vicuna_v1", "--max-new-tokens", "2", *extra]


def test_tsv_mcq_prompts_as_vlmevalkit_asks_llava(tiny_llava, tiny, demo, tmp_path, prompts):
    answers = tmp_path / "mmstar.jsonl"
    model_vqa_tsv.main(tsv_args(tiny_llava, os.path.join(demo, "mmstar", "MMStar.tsv"), answers), loaded=tiny)
    lines = read_lines(answers)
    assert [line["question_id"] for line in lines] == [0, 1, 2]  # row 1 shares row 0's image by index
    for line in lines:
        check_answer_line(line)
    assert lines[0]["prompt"] == "What shape is shown?\nA. square\nB. circle\nC. star\nD. heart"
    assert prompts[0] == (f"{SYSTEM} USER: <image>\nWhat shape is shown?\nA. square\nB. circle\nC. star\n"
                          f"D. heart\n{LETTER} ASSISTANT:")
    meta = json.loads((tmp_path / "mmstar.jsonl.meta.json").read_text())
    assert meta["settings"]["options"] == {"prompt_style": "mcq"} and meta["complete"] is True


def test_tsv_hint_gaps_chinese_and_plain_style(tiny_llava, tiny, tmp_path, prompts):
    b64 = png_base64(draw_scene(random.Random(0), [("circle", "red")]))
    tsv = tmp_path / "t.tsv"
    rows = [("7", "What is it?", "A hint.", "cat", "", "bird"), ("8", "这是什么？", "", "猫", "狗", "")]
    tsv.write_text("index\tquestion\thint\tA\tB\tC\timage\n" + "".join("\t".join(r) + f"\t{b64}\n" for r in rows))
    model_vqa_tsv.main(tsv_args(tiny_llava, tsv, tmp_path / "a.jsonl"), loaded=tiny)
    # VLMEvalKit keeps every present option (C after an empty B), unlike LLaVA's MMBench driver.
    assert prompts[0].endswith("USER: <image>\nA hint.\nWhat is it?\nA. cat\nC. bird\n"
                               f"{LETTER} ASSISTANT:")
    assert prompts[1].endswith("USER: <image>\n这是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。 ASSISTANT:")
    model_vqa_tsv.main(tsv_args(tiny_llava, tsv, tmp_path / "b.jsonl", "--prompt-style", "plain"), loaded=tiny)
    assert prompts[2].endswith("USER: <image>\nWhat is it? ASSISTANT:")
    assert [line["prompt"] for line in read_lines(tmp_path / "b.jsonl")] == ["What is it?", "这是什么？"]


def test_tsv_mmmu_two_images_and_open_questions(tiny_llava, tiny, demo, tmp_path, prompts):
    answers = tmp_path / "mmmu.jsonl"
    model_vqa_tsv.main(tsv_args(tiny_llava, os.path.join(demo, "mmmu", "MMMU_DEV_VAL.tsv"), answers), loaded=tiny)
    assert [line["question_id"] for line in read_lines(answers)] == [1, 2, 3, 4]
    # Both images of row 2 are shown, each under its own marker (the model checks markers against images).
    assert prompts[1].startswith(f"{SYSTEM} USER: <image>\n<image>\nWhich image shows a square? <image 1> <image 2>"
                                 "\nA. <image 1>\nB. <image 2>\n")
    assert prompts[2].endswith("USER: <image>\n<image 1> How many sides does the shape have?\n"
                               "Answer the question directly. ASSISTANT:")


# ------------------------------------------------------------------------------------------------ resume


def test_resume_after_kill_loses_and_duplicates_nothing(tiny_llava, tiny, demo, tmp_path, monkeypatch):
    full = tmp_path / "full.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, full, "textvqa"), loaded=tiny)
    reference = read_lines(full)

    # A run killed while writing its third answer: two complete lines and a partial third one.
    killed = tmp_path / "killed.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, killed, "textvqa"), loaded=tiny)
    raw = killed.read_text().splitlines(keepends=True)
    killed.write_text("".join(raw[:2]) + raw[2][: len(raw[2]) // 2])
    meta_file = tmp_path / "killed.jsonl.meta.json"
    meta = json.loads(meta_file.read_text())
    meta["complete"] = False
    meta_file.write_text(json.dumps(meta))

    with pytest.warns(UserWarning, match="partial last line"):
        model_vqa_loader.main(loader_args(tiny_llava, demo, killed, "textvqa"), loaded=tiny)
    resumed = read_lines(killed)
    assert [(r["question_id"], r["prompt"], r["text"]) for r in resumed] == [
        (r["question_id"], r["prompt"], r["text"]) for r in reference]
    # The two answers that survived the kill are kept as they were, not redone.
    assert [r["answer_id"] for r in resumed[:2]] == [json.loads(line)["answer_id"] for line in raw[:2]]
    assert json.loads(meta_file.read_text())["complete"] is True

    # A rerun of a finished file does nothing, without even loading the model.
    def no_load(*a, **k):
        raise AssertionError("the model must not be loaded when every answer is there")

    monkeypatch.setattr(driver, "load_model", no_load)
    before = killed.read_bytes()
    model_vqa_loader.main(loader_args(tiny_llava, demo, killed, "textvqa"))
    assert killed.read_bytes() == before


def test_resume_refuses_other_settings(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "a.jsonl"
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet"), loaded=tiny)
    with pytest.raises(EvalInputError, match="other settings.*prune: None before"):
        model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet", "--prune-method", "entropy",
                                   "--prune-keep", "64"), loaded=tiny)
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet", "--prune-method", "entropy", "--prune-keep",
                               "64", "--overwrite"), loaded=tiny)
    assert len(read_lines(answers)) == 4
    assert json.loads((tmp_path / "a.jsonl.meta.json").read_text())["kept_tokens"] == 64


def test_resume_mmbench_keys_on_round(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "mmb.jsonl"
    args = mmbench_args(tiny_llava, demo, answers, "en", "--all-rounds")
    model_vqa_mmbench.main(args, loaded=tiny)
    reference = read_lines(answers)
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(lines[:5]) + lines[5][:40])  # killed in the second round of question 107
    with pytest.warns(UserWarning, match="partial last line"):
        model_vqa_mmbench.main(args, loaded=tiny)
    resumed = read_lines(answers)
    key = [(r["question_id"], r["round_id"], r["text"]) for r in resumed]
    assert key == [(r["question_id"], r["round_id"], r["text"]) for r in reference]


# ------------------------------------------------------------------------------------------------ chunks


def test_split_list_is_llava_ceil_chunking():
    assert shards.split_list(list(range(5)), 3) == [[0, 1], [2, 3], [4]]
    assert shards.split_list(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    assert shards.get_chunk(list(range(3)), 4, 3) == []  # LLaVA would raise IndexError here
    assert shards.get_chunk([], 2, 0) == []


def test_two_chunks_merged_equal_single_run(tiny_llava, tiny, demo, tmp_path):
    single = tmp_path / "single.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, single), loaded=tiny)
    parts = []
    for idx in range(2):
        part = tmp_path / "chunks" / f"2_{idx}.jsonl"
        model_vqa_loader.main(loader_args(tiny_llava, demo, part, "MME", "--num-chunks", "2", "--chunk-idx",
                                          str(idx)), loaded=tiny)
        parts.append(str(part))
    assert len(read_lines(parts[0])) == 14 and len(read_lines(parts[1])) == 14
    merged = tmp_path / "merged.jsonl"
    meta = answer_file.merge_answers(str(merged), parts)
    assert meta["complete"] is True and meta["answers"] == 28 and meta["questions"] == 28
    key = ("question_id", "prompt", "text")
    assert [[r[k] for k in key] for r in read_lines(merged)] == [[r[k] for k in key] for r in read_lines(single)]


def test_merge_refuses_interrupted_or_mismatched_chunks(tiny_llava, tiny, demo, tmp_path):
    a, b = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl"
    model_vqa.main(loader_args(tiny_llava, demo, a, "mmvet", "--num-chunks", "2", "--chunk-idx", "0"), loaded=tiny)
    model_vqa.main(loader_args(tiny_llava, demo, b, "mmvet", "--num-chunks", "2", "--chunk-idx", "1",
                               "--max-new-tokens", "2"), loaded=tiny)
    with pytest.raises(EvalInputError, match="different settings \\(max_new_tokens\\)"):
        answer_file.merge_answers(str(tmp_path / "m.jsonl"), [str(a), str(b)])
    b.write_text(a.read_text()[:-5])
    with pytest.raises(EvalInputError, match="partial line"):
        answer_file.merge_answers(str(tmp_path / "m.jsonl"), [str(a), str(b)])
    assert not (tmp_path / "m.jsonl").exists()


def test_torchrun_env_sharding_equals_single_run(tiny_llava, tiny, demo, tmp_path):
    single = tmp_path / "single.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, single, "textvqa"), loaded=tiny)

    answers = tmp_path / "tr" / "answers.jsonl"
    args = loader_args(tiny_llava, demo, answers, "textvqa")
    errors = []

    def rank0():
        try:
            model_vqa_loader.main(args, loaded=tiny, env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    # Rank 0 starts first and must wait (file barrier) for rank 1's shard before merging.
    t = threading.Thread(target=rank0)
    t.start()
    model_vqa_loader.main(args, loaded=tiny, env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    t.join(timeout=120)
    assert not t.is_alive() and not errors
    assert os.path.isfile(tmp_path / "tr" / "answers" / "2_0.jsonl")
    assert os.path.isfile(tmp_path / "tr" / "answers" / "2_1.jsonl")
    key = ("question_id", "prompt", "text")
    assert [[r[k] for k in key] for r in read_lines(answers)] == [[r[k] for k in key] for r in read_lines(single)]
    assert json.loads((tmp_path / "tr" / "answers.jsonl.meta.json").read_text())["complete"] is True


def test_torchrun_rank0_stops_when_a_rank_failed(tmp_path):
    bench = model_vqa_loader.BENCHMARK
    part = str(tmp_path / "2_1.jsonl")
    shards.mark_failure(part)
    with pytest.raises(EvalInputError, match="rank 1 failed"):
        shards.wait_for_shards(bench, [str(tmp_path / "2_0.jsonl"), part],
                                [Counter(), Counter({("x", "y"): 1})], started=0.0)


def test_chunk_flags_are_checked():
    env = {"RANK": "3", "WORLD_SIZE": "2"}
    def parse(argv):
        return driver.build_parser("x", 128).parse_args([*REQUIRED, *argv])

    with pytest.raises(EvalInputError, match="RANK='3' is not in 0..1"):
        shards.resolve_shard(parse([]), env)
    with pytest.raises(EvalInputError, match="--chunk-idx 2 is out of range"):
        shards.resolve_shard(parse(["--num-chunks", "2", "--chunk-idx", "2"]), {})
    shard = shards.resolve_shard(parse(["--answers-file", "a/b.jsonl"]), {"RANK": "1", "WORLD_SIZE": "4"})
    assert (shard.mode, shard.num, shard.idx, shard.answers_file) == ("torchrun", 4, 1, "a/b/4_1.jsonl")
    # --num-chunks wins over the torchrun environment.
    assert shards.resolve_shard(parse(["--num-chunks", "1"]), env).mode == "single"


# ------------------------------------------------------------------------------------------------ errors


def test_malformed_question_line_names_file_and_line(tiny_llava, demo, tmp_path):
    qfile = tmp_path / "questions.jsonl"
    good = {"question_id": 0, "image": "v1_0.png", "text": "What is this?"}
    qfile.write_text(json.dumps(good) + "\n" + '{"question_id": 1, "image": "v1_1.png", "text": \n')
    args = loader_args(tiny_llava, demo, tmp_path / "a.jsonl", "mmvet")
    args[args.index("--question-file") + 1] = str(qfile)
    with pytest.raises(EvalInputError, match=r"questions\.jsonl:2: malformed JSON"):
        model_vqa.main(args)
    qfile.write_text(json.dumps(good) + "\n" + json.dumps({"question_id": 1, "image": "v1_1.png"}) + "\n")
    with pytest.raises(EvalInputError, match=r"questions\.jsonl:2: missing field\(s\) text"):
        model_vqa.main(args)
    # From the command line: one error line, exit status 2, before any model is loaded.
    qfile.write_text("not json\n")
    proc = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert f"error: {qfile}:1: malformed JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_non_utf8_and_non_string_question_fields_name_the_line(tiny_llava, demo, tmp_path):
    qfile = tmp_path / "questions.jsonl"
    args = loader_args(tiny_llava, demo, tmp_path / "a.jsonl")
    args[args.index("--question-file") + 1] = str(qfile)
    good = json.dumps({"question_id": 0, "image": "v1_0.png", "text": "What is this?"}) + "\n"
    qfile.write_bytes(good.encode() + '{"question_id": 1, "image": "a.png", "text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(EvalInputError, match=r"questions\.jsonl:2: not UTF-8 text"):
        model_vqa_loader.main(args)
    for bad, message in [({"image": None}, r"questions\.jsonl:2: 'image' must be a non-empty string, got None"),
                         ({"text": 5}, r"questions\.jsonl:2: 'text' must be a non-empty string, got 5")]:
        line = {"question_id": 1, "image": "v1_1.png", "text": "Why?", **bad}
        qfile.write_text(good + json.dumps(line) + "\n")
        with pytest.raises(EvalInputError, match=message):
            model_vqa_loader.main(args)


def test_missing_image_is_named_before_loading(tiny_llava, demo, tmp_path):
    root = tmp_path / "eval"
    shutil.copytree(os.path.join(demo, "mm-vet"), root / "mm-vet")
    os.remove(root / "mm-vet" / "images" / "v1_2.png")
    args = loader_args(tiny_llava, str(root), tmp_path / "a.jsonl", "mmvet")
    named = r"1 image file\(s\) not found, e\.g\. .*v1_2\.png .*llava-mm-vet\.jsonl:3"
    with pytest.raises(EvalInputError, match=named):
        model_vqa.main(args)


def test_malformed_science_json_and_tsv(tiny_llava, tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text('[{"id": "1", "conversations": [{"from": "human", "value": "x"}]},\n{"id": }]')
    with pytest.raises(EvalInputError, match=r"q\.json is not valid JSON \(line 2"):
        model_vqa_science.main(["--model-path", tiny_llava, "--question-file", str(bad), "--answers-file",
                                str(tmp_path / "a.jsonl")])
    tsv = tmp_path / "m.tsv"
    tsv.write_text("index\tquestion\timage\n1\tq\n")
    with pytest.raises(EvalInputError, match=r"m\.tsv:2: 2 fields, header has 3"):
        model_vqa_mmbench.main(["--model-path", tiny_llava, "--question-file", str(tsv), "--answers-file",
                                str(tmp_path / "a.jsonl")])


def test_an_empty_question_file_is_an_error_not_a_zero_score(tiny_llava, tmp_path):
    # Every format the drivers read: nothing to answer must not become a "complete" run scored 0.
    empty = {"q.jsonl": "", "q.json": "[]", "m.tsv": "index\tquestion\thint\tA\tB\tanswer\tcategory\timage\n"}
    drivers = {"q.jsonl": model_vqa_loader, "q.json": model_vqa_science, "m.tsv": model_vqa_mmbench}
    for name, text in empty.items():
        (tmp_path / name).write_text(text)
        answers = tmp_path / f"{name}.answers.jsonl"
        with pytest.raises(EvalInputError, match=rf"{name} holds no questions"):
            drivers[name].main(["--model-path", tiny_llava, "--question-file", str(tmp_path / name),
                                "--answers-file", str(answers)])
        assert not answers.exists() and not os.path.exists(f"{answers}.meta.json")


def test_a_record_checks_the_answers_not_only_the_sidecar(tiny_llava, tiny, demo, tmp_path):
    from llava.eval import record

    answers = tmp_path / "mme.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, answers), loaded=tiny)
    good = answers.read_text(encoding="utf-8").splitlines(keepends=True)
    assert record.build_record("mme", "run", str(answers), None, 1.0)["answers"] == 28

    def broken(lines, match):
        answers.write_text("".join(lines), encoding="utf-8")  # the sidecar still says complete
        with pytest.raises(EvalInputError, match=match):
            record.build_record("mme", "run", str(answers), None, 1.0)

    # A second writer appended: every question twice (the first duplicate is line 29, of line 1).
    broken(good + good, r"mme\.jsonl:29: a second answer to question .* \(the first is on line 1\)")
    broken(good[:-1], r"holds 27 answers but its sidecar says 28 questions")
    other = json.loads(good[3])
    other["model_id"] = "another-model"
    broken(good[:3] + [json.dumps(other) + "\n"] + good[4:], r"answers by model_id another-model, but its sidecar")


def test_a_prompt_longer_than_the_context_is_cut_as_llava_does_and_says_so(tiny_llava, tiny, demo, tmp_path,
                                                                            monkeypatch, capsys):
    from llava.eval import record
    from llava.mm_utils import tokenizer_image_token

    tok, model = tiny[0], tiny[1]
    questions = read_lines(os.path.join(demo, "MME", "llava_mme.jsonl"))
    ids = [tokenizer_image_token(driver.build_prompt(driver.Item(q["question_id"], q["text"], q["text"], lambda: None),
                                                     "vicuna_v1",
                                                     model.config), tok) for q in questions]
    lengths = [len(x) - 1 + 576 for x in ids]  # one <image> marker becomes 576 patches
    limit = sorted(lengths)[len(lengths) // 2]  # about half the prompts are longer
    monkeypatch.setattr(model.config, "tokenizer_model_max_length", limit)
    answers = tmp_path / "mme.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, answers), loaded=tiny)
    lines = read_lines(answers)
    cut = [n for n in lengths if n > limit]
    assert 0 < len(cut) < len(lengths)
    for line, n in zip(lines, lengths, strict=True):
        expected = {"truncated": {"prompt_tokens": n, "kept_tokens": limit}} if n > limit else {}
        assert line["metadata"] == expected
    warning = f"warning: {len(cut)} prompt(s) were longer than the model's context ({limit} tokens"
    assert warning in capsys.readouterr().err
    assert record.build_record("mme", "run", str(answers), None, 1.0)["truncated_prompts"] == len(cut)
    # Keeping 16 patches at the vision stage makes every prompt fit: nothing is cut, nothing is flagged.
    answers = tmp_path / "kept16.jsonl"
    model_vqa_loader.main(loader_args(tiny_llava, demo, answers, "MME", "--prune-method", "random",
                                      "--prune-layer", "0", "--prune-keep", "16"), loaded=tiny)
    assert all(line["metadata"] == {} for line in read_lines(answers))


# ------------------------------------------------------------------------------------------------ demo data


def test_demo_data_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    counts = make_demo_data.build(str(a), seed=0)
    make_demo_data.build(str(b), seed=0)

    def files(root):
        out = {}
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                out[os.path.relpath(path, root)] = open(path, "rb").read()
        return out

    assert files(a) == files(b)
    assert counts == {"mme": 56, "textvqa": 5, "sqa": 5, "mmbench": 9, "mmbench_cn": 9, "mmvet": 4,
                      "gqa": 5, "pope": 6, "mmstar": 3, "ai2d": 2, "ocrbench": 3, "mmmu": 4}
    mme = a / "MME" / "MME_Benchmark_release_version"
    assert sorted(os.listdir(mme)) == sorted(make_demo_data.MME_SUBTASKS)
    assert sorted(os.listdir(mme / "artwork")) == ["images", "questions_answers_YN"]
    assert (mme / "code_reasoning" / "0001.png").is_file() and (mme / "code_reasoning" / "0001.txt").is_file()
    gt = (mme / "existence" / "10000.txt").read_text().splitlines()
    assert len(gt) == 2 and all(line.endswith(("? Please answer yes or no.\tYes", "? Please answer yes or no.\tNo"))
                                for line in gt)
    ann = json.loads((a / "textvqa" / "TextVQA_0.5.1_val.json").read_text())
    assert all(len(d["answers"]) == 10 for d in ann["data"])
    assert (a / "scienceqa" / "images" / "test" / "4" / "image.png").is_file()
    assert make_demo_data.build(str(a), seed=1)  # its own demo folder may be rewritten


def test_demo_data_never_overwrites_real_data(tmp_path):
    (tmp_path / "MME").mkdir()
    (tmp_path / "MME" / "llava_mme.jsonl").write_text("real\n")
    with pytest.raises(FileExistsError, match="not demo data"):
        make_demo_data.build(str(tmp_path))
    assert (tmp_path / "MME" / "llava_mme.jsonl").read_text() == "real\n"


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_real_torchrun_two_processes(tiny_llava, demo, tmp_path):
    answers = tmp_path / "tr" / "a.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(["torchrun", "--nproc-per-node", "2", "-m", "llava.eval.model_vqa",
                           *loader_args(tiny_llava, demo, answers, "mmvet")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_lines(answers)
    assert [r["question_id"] for r in lines] == [0, 1, 2, 3]
    assert lines == read_lines(tmp_path / "tr" / "a" / "2_0.jsonl") + read_lines(tmp_path / "tr" / "a" / "2_1.jsonl")
    meta = json.loads((tmp_path / "tr" / "a.jsonl.meta.json").read_text())
    assert meta["complete"] is True and meta["chunk"]["num_chunks"] == 2


def test_prune_layer_auto_is_resolved_before_recording(tiny_llava, tiny, demo, tmp_path, monkeypatch):
    from entropyprune import ecl

    monkeypatch.setenv(ecl.REGISTRY_ENV, str(tmp_path / "registry.json"))
    args = loader_args(tiny_llava, demo, tmp_path / "a.jsonl", "mmvet", "--prune-method", "entropy",
                       "--prune-layer", "auto", "--prune-keep", "64")
    with pytest.raises(EvalInputError, match="--prune-layer auto: no Entropy Collapse Layer is known"):
        model_vqa.main(args, loaded=tiny)
    ecl.register_collapse_layer(tiny_llava, 1)
    model_vqa.main(args, loaded=tiny)
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["layer"] == 1 and meta["settings"]["prune"]["layer"] == 1


def test_method_options_are_recorded_and_a_resume_with_others_is_refused(tiny_llava, tiny, demo, tmp_path):
    answers = tmp_path / "a.jsonl"
    dart = ["--prune-method", "dart", "--prune-keep", "68"]
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet", *dart, "--prune-option", "pivot_text=4"),
                   loaded=tiny)
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    # Every option is written, defaults included, in the settings and beside the budget.
    assert meta["settings"]["prune"]["options"] == {"pivot_image": 4, "pivot_text": 4, "max_num_trunction": 0}
    assert meta["method_options"] == meta["settings"]["prune"]["options"] and meta["kept_tokens"] == 68
    # The same options spelled differently (a default made explicit) are the same settings: nothing to redo.
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet", *dart), loaded=tiny)
    assert len(read_lines(answers)) == 4
    with pytest.raises(EvalInputError, match="other settings"):
        model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet", *dart, "--prune-option", "pivot_text=2"),
                       loaded=tiny)


# ------------------------------------------------------------------------------------------------ batching

# driver, its arguments (model, demo data, answers file -> argv), the pruning flags its runs use.
BATCH_CASES = {
    "loader": (model_vqa_loader, lambda m, d, a: loader_args(m, d, a, "textvqa"),
               ["--prune-method", "entropy", "--prune-keep", "166"]),
    "model_vqa": (model_vqa, lambda m, d, a: loader_args(m, d, a, "mmvet"),
                  ["--prune-method", "fastv", "--prune-layer", "1", "--prune-ratio", "0.25"]),
    "science": (model_vqa_science, sqa_args,  # image and text-only questions mixed
                ["--prune-method", "random", "--prune-keep", "29", "--prune-seed", "3"]),
    "mmbench": (model_vqa_mmbench, lambda m, d, a: mmbench_args(m, d, a, "en"),
                ["--prune-method", "entropy", "--prune-avg-tokens", "300"]),
    "tsv": (model_vqa_tsv, lambda m, d, a: tsv_args(m, os.path.join(d, "mmmu", "MMMU_DEV_VAL.tsv"), a),
            ["--prune-method", "entropy", "--prune-keep", "64"]),  # MMMU: rows with one and two images
}


@pytest.fixture
def answered(tiny, monkeypatch):
    """Per question, in the order answered: the new token ids decoded, and the prune trace of its row."""
    import llava.decoding

    seen = {"ids": [], "trace": []}
    decode = llava.decoding.decode_answer

    def spy_decode(tokenizer, ids):
        seen["ids"].append(ids.tolist())
        return decode(tokenizer, ids)

    original = type(tiny[1]).generate

    def spy_generate(self, *a, **k):
        out = original(self, *a, **k)
        seen["trace"] += [[[(r.layer, r.length, r.kept.tolist()) for r in stages] for stages in row]
                          for row in self.get_model().prune_trace]
        return out

    monkeypatch.setattr(llava.decoding, "decode_answer", spy_decode)
    monkeypatch.setattr(type(tiny[1]), "generate", spy_generate)

    def take():
        got = {k: list(v) for k, v in seen.items()}
        for v in seen.values():
            v.clear()
        return got

    return take


def _answers(path):
    return [{k: v for k, v in line.items() if k != "answer_id"} for line in read_lines(path)]


@pytest.mark.parametrize("case", sorted(BATCH_CASES))
def test_batch_of_b_equals_single_runs(tiny_llava, tiny, demo, tmp_path, monkeypatch, answered, case):
    module, make_args, prune = BATCH_CASES[case]

    def run(name, *extra):
        answers = tmp_path / f"{name}.jsonl"
        args = make_args(tiny_llava, demo, answers)
        args[args.index("--max-new-tokens") + 1] = "6"
        module.main([*args, *prune, *extra], loaded=tiny)
        return answers, answered()

    _, free = run("free")
    # The second token of the first answer becomes EOS, so rows stop at different steps within a batch.
    monkeypatch.setattr(tiny[1].config, "eos_token_id", free["ids"][0][1])
    single, ref = run("b1")
    assert len({len(ids) for ids in ref["ids"]}) > 1, case
    assert ref["ids"][0] == free["ids"][0][:2]
    n = len(ref["ids"])
    for batch, extra in ((3, ()), (n, ()), (2, ("--bucket-window", str(n)))):
        answers, got = run(f"b{batch}{'w' if extra else ''}", "--batch-size", str(batch), *extra)
        assert _answers(answers) == _answers(single), (case, batch, extra)
        assert got["ids"] == ref["ids"], (case, batch, extra)
        if not extra:  # in question order: the rows' traces line up with the single runs' ones
            assert got["trace"] == ref["trace"], (case, batch)
        meta = json.loads((tmp_path / f"{answers.name}.meta.json").read_text())
        assert (meta["batch_size"], meta["bucket_window"]) == (batch, int(extra[1]) if extra else None)
        assert meta["settings"] == json.loads((tmp_path / "b1.jsonl.meta.json").read_text())["settings"]
        assert "batch_size" not in json.dumps(meta["settings"]) and meta["complete"] is True
    assert any(ref["trace"]) and ([] in ref["trace"]) == (case == "science")  # text-only rows have no images


def test_resume_after_an_interruption_in_the_middle_of_a_batch(tiny_llava, tiny, demo, tmp_path, monkeypatch):
    args = loader_args(tiny_llava, demo, tmp_path / "full.jsonl", "textvqa", "--prune-method", "entropy",
                       "--prune-keep", "100")
    model_vqa_loader.main(args, loaded=tiny)
    reference = _answers(tmp_path / "full.jsonl")
    assert len(reference) == 5

    # 1. The model raises in its second batch (questions 3-4 of 5 at batch size 2): the first batch is kept.
    gen = type(tiny[1]).generate
    calls = []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second batch")
        return gen(self, *a, **k)

    answers = tmp_path / "a.jsonl"
    args[args.index("--answers-file") + 1] = str(answers)
    monkeypatch.setattr(type(tiny[1]), "generate", failing)
    with pytest.raises(RuntimeError, match="second batch"):
        model_vqa_loader.main([*args, "--batch-size", "2"], loaded=tiny)
    monkeypatch.setattr(type(tiny[1]), "generate", gen)
    kept = read_lines(answers)
    assert _answers(answers) == reference[:2]
    assert json.loads((tmp_path / "a.jsonl.meta.json").read_text())["complete"] is False
    # Resumed at another batch size: no refusal (batch size is not a setting), nothing lost or repeated.
    model_vqa_loader.main([*args, "--batch-size", "3"], loaded=tiny)
    assert _answers(answers) == reference
    assert [r["answer_id"] for r in read_lines(answers)[:2]] == [r["answer_id"] for r in kept]
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["complete"] is True and meta["batch_size"] == 3 and meta["answers"] == 5

    # 2. Killed while writing the second answer of a batch of three: a complete line, then half a line.
    killed = tmp_path / "k.jsonl"
    args[args.index("--answers-file") + 1] = str(killed)
    write = answer_file.AnswerWriter.write
    writes = []

    def dying(self, record):
        writes.append(record)
        if len(writes) == 2:
            line = json.dumps(record) + "\n"
            self._f.write(line[: len(line) // 2])
            self._f.flush()
            raise KeyboardInterrupt
        write(self, record)

    monkeypatch.setattr(answer_file.AnswerWriter, "write", dying)
    with pytest.raises(KeyboardInterrupt):
        model_vqa_loader.main([*args, "--batch-size", "3"], loaded=tiny)
    monkeypatch.setattr(answer_file.AnswerWriter, "write", write)
    (first,) = answer_file.read_answers(str(killed))  # the half line is not an answer
    assert not killed.read_text().endswith("\n")
    with pytest.warns(UserWarning, match="partial last line"):
        model_vqa_loader.main([*args, "--batch-size", "2", "--bucket-window", "4"], loaded=tiny)
    assert _answers(killed) == reference
    assert read_lines(killed)[0]["answer_id"] == first["answer_id"]


@pytest.mark.parametrize("batch, extra", [(1, ()), (3, ()), (4, ()), (2, ("--bucket-window", "4"))])
def test_bad_image_in_a_batch_stops_with_its_name_and_keeps_earlier_answers(tiny_llava, tiny, demo, tmp_path,
                                                                            batch, extra):
    root = tmp_path / "eval"
    shutil.copytree(os.path.join(demo, "mm-vet"), root / "mm-vet")
    (root / "mm-vet" / "images" / "v1_2.png").write_bytes(b"not a png")  # present, so the pre-check passes
    answers = tmp_path / "a.jsonl"
    args = loader_args(tiny_llava, str(root), answers, "mmvet", "--batch-size", str(batch), *extra)
    with pytest.raises(EvalInputError, match=r"cannot read image .*v1_2\.png"):
        model_vqa.main(args, loaded=tiny)
    # The two questions before the bad one are answered and on disk, as at batch size 1; nothing after it.
    good = tmp_path / "good.jsonl"
    model_vqa.main(loader_args(tiny_llava, demo, good, "mmvet"), loaded=tiny)
    assert _answers(answers) == _answers(good)[:2]


def test_chunks_run_at_different_batch_sizes_merge_into_the_single_run(tiny_llava, tiny, demo, tmp_path):
    single = tmp_path / "single.jsonl"
    model_vqa.main(loader_args(tiny_llava, demo, single, "mmvet"), loaded=tiny)
    parts = []
    for idx, batch in enumerate((1, 2)):
        part = tmp_path / f"2_{idx}.jsonl"
        model_vqa.main(loader_args(tiny_llava, demo, part, "mmvet", "--num-chunks", "2", "--chunk-idx", str(idx),
                                   "--batch-size", str(batch)), loaded=tiny)
        parts.append(str(part))
    meta = answer_file.merge_answers(str(tmp_path / "m.jsonl"), parts)  # batch size is no setting: no refusal
    assert _answers(tmp_path / "m.jsonl") == _answers(single)
    assert meta["batch_size"] == [1, 2] and meta["bucket_window"] is None and meta["complete"] is True


def test_a_second_writer_of_one_answers_file_is_refused_at_once(tiny_llava, tiny, demo, tmp_path):
    # Another process (a real one) holds the run's lock; a killed holder releases it with its process.
    import signal

    answers = tmp_path / "a.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom llava.eval.answer_file import answers_lock\n"
         f"with answers_lock({str(answers)!r}):\n    print('locked', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(EvalInputError, match=rf"being written by another run \(process {holder.pid} holds"):
            model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet"), loaded=tiny)
        assert not answers.exists()  # nothing was written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    model_vqa.main(loader_args(tiny_llava, demo, answers, "mmvet"), loaded=tiny)  # the lock died with it
    assert len(read_lines(answers)) == 4
