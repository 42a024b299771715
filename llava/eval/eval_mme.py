"""Score MME answers: LLaVA's `convert_answer_to_mme.py` and MME's `eval_tool/calculation.py` in one step.

    python -m llava.eval.eval_mme --answers-file answers/ckpt.jsonl \
        --mme-dir playground/data/eval/MME/MME_Benchmark_release_version \
        [--output-json O.json] [--write-eval-tool-dir playground/data/eval/MME/eval_tool/answers/ckpt]

Ground truth: every `<cat>/` folder of --mme-dir, either `<cat>/images/` + `<cat>/questions_answers_YN/*.txt`
or images and .txt files side by side in `<cat>/`; each txt line is "question<TAB>Yes|No" and each txt
file belongs to the image with the same stem (two questions per image).

Matching: the answer's `question_id` ("artwork/images/14777.jpg") gives the category (first path part)
and the txt file (image stem + ".txt"); its `prompt` loses LLaVA's "Answer the question using a single
word or phrase." suffix and gets MME's " Please answer yes or no." back, or the double-space variant when
only that one is in the ground truth.

Scoring (calculation.py): lower-case the answer; exactly "yes"/"no" is taken as is; otherwise "yes" in
its first 4 characters -> yes, else "no" there -> no, else "other" (wrong). Per subtask, acc = correct
questions / questions, acc+ = images with every question right / images, score = 100*acc + 100*acc+.
Perception sums the 10 perception subtasks, Cognition the 4 cognition ones, Total = Perception +
Cognition.

Answers follow `llava.eval.answer_index`: two answers to one ground-truth question, an answer matching no
ground-truth question and an empty answers file are errors; a ground-truth question with no answer counts
as wrong, so its image is not fully right either (acc+), with a warning and the count in `missing` (per
subtask and in total).

Prints one `<subtask>: x.xx` line per subtask, then `Perception: x.xx`, `Cognition: x.xx`, `Total: x.xx`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from llava.eval import (
    EvalInputError,
    default_summary_path,
    read_jsonl,
    require_file,
    run_cli,
    warn,
    write_json,
)
from llava.eval.answer_index import index_answers

PERCEPTION = (
    "existence", "count", "position", "color", "posters",
    "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
LLAVA_SUFFIX = "Answer the question using a single word or phrase."
YES_NO_SUFFIX = "Please answer yes or no."
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass
class _Question:
    question: str
    gt: str  # as written in the ground truth ("Yes"/"No")
    source: str  # "file:line", for error messages
    prediction: str | None = None  # raw answer text; None while unanswered


@dataclass
class _Image:
    category: str
    txt_file: str
    image_name: str
    questions: list[_Question] = field(default_factory=list)


def parse_pred(text: str) -> str:
    """MME's answer parser: "yes", "no" or "other"."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def load_ground_truth(mme_dir: str) -> dict[tuple[str, str], _Image]:
    """Ground truth per (category, txt file name), questions in file order."""
    if not os.path.isdir(mme_dir):
        raise EvalInputError(
            f"MME folder not found: {mme_dir}. Pass --mme-dir pointing at MME_Benchmark_release_version."
        )
    images: dict[tuple[str, str], _Image] = {}
    for category in sorted(os.listdir(mme_dir)):
        cat_dir = os.path.join(mme_dir, category)
        if not os.path.isdir(cat_dir):
            continue
        if os.path.isdir(os.path.join(cat_dir, "images")):
            image_dir = os.path.join(cat_dir, "images")
            qa_dir = os.path.join(cat_dir, "questions_answers_YN")
            if not os.path.isdir(qa_dir):
                raise EvalInputError(
                    f"{cat_dir} has images/ but no questions_answers_YN/; restore it from the MME release."
                )
        else:
            image_dir = qa_dir = cat_dir
        # Map txt stem -> image file name, so the eval_tool files can name the image like MME's do.
        stems = {}
        for name in os.listdir(image_dir):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTS:
                stems[stem] = name
        for txt in sorted(os.listdir(qa_dir)):
            if not txt.endswith(".txt"):
                continue
            path = os.path.join(qa_dir, txt)
            stem = os.path.splitext(txt)[0]
            image = _Image(category, txt, stems.get(stem, stem))
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    line = line.strip()
                    if not line:
                        continue
                    parts = line.split("\t")
                    if len(parts) != 2 or parts[1].lower() not in ("yes", "no"):
                        raise EvalInputError(
                            f"{path}:{lineno}: expected 'question<TAB>Yes|No', got {line!r}. "
                            "Restore the file from the MME release."
                        )
                    image.questions.append(_Question(parts[0], parts[1], f"{path}:{lineno}"))
            if image.questions:
                images[(category, txt)] = image
    if not images:
        raise EvalInputError(
            f"no MME ground truth (<cat>/questions_answers_YN/*.txt or <cat>/*.txt) under {mme_dir}. "
            "Pass --mme-dir pointing at MME_Benchmark_release_version."
        )
    return images


def _candidate_questions(prompt: str) -> list[str]:
    if LLAVA_SUFFIX in prompt:
        prompt = prompt.replace(LLAVA_SUFFIX, "").strip()
    if YES_NO_SUFFIX in prompt:
        return [prompt]
    # Some MME files have two spaces before the suffix; LLaVA tries the single-space form first.
    return [f"{prompt} {YES_NO_SUFFIX}", f"{prompt}  {YES_NO_SUFFIX}"]


def _match_answers(answers_file: str, images: dict[tuple[str, str], _Image]) -> list[tuple[str, str]]:
    """Fill in predictions; return the image keys in order of first appearance in the answers file.

    An answer's key is (category, txt file, ground-truth question): its question_id names the image, its
    prompt the question (`llava.eval.answer_index` then refuses a repeated or unknown one).
    """
    questions = {(cat, txt, q.question): q for (cat, txt), image in images.items() for q in image.questions}

    def key(ans: dict) -> tuple[str, str, str]:
        qid = str(ans["question_id"])
        category = qid.split("/")[0]
        txt = os.path.splitext(os.path.basename(qid))[0] + ".txt"
        candidates = _candidate_questions(ans["prompt"])
        found = [c for c in candidates if (category, txt, c) in questions]
        return category, txt, (found or candidates)[0]

    def unknown(k: tuple[str, str, str], ans: dict) -> str:
        return (f"no MME ground truth for question_id={ans['question_id']!r} (looked in category {k[0]!r}, file "
                f"{k[1]!r}) with prompt {ans['prompt']!r}; is --mme-dir MME_Benchmark_release_version, and are "
                "the answers from llava_mme.jsonl?")

    required = ("question_id", "prompt", "text")
    index = index_answers(
        answers_file, read_jsonl(answers_file, "MME answers file", required=required), benchmark="MME", key=key,
        known=questions, unknown=unknown, driver="llava.eval.model_vqa_loader on llava_mme.jsonl",
        describe=lambda k: f"the question {k[2]!r} of {k[0]}/{k[1]}",
    )
    order: dict[tuple[str, str], None] = {}
    for k, ans in index.items():
        questions[k].prediction = ans["text"]
        order.setdefault(k[:2], None)
    index.missing(questions)
    return list(order)


def _write_eval_tool(out_dir: str, images: list[_Image]) -> None:
    """Per-category `<cat>.txt` files in the layout MME's eval_tool/calculation.py reads.

    calculation.py pairs consecutive lines, so each image's questions are written together and an
    unanswered question gets an empty prediction (parsed as "other") instead of being left out, which
    would shift every later pair.
    """
    os.makedirs(out_dir, exist_ok=True)
    by_cat: dict[str, list[str]] = {}
    for image in images:
        for q in image.questions:
            # Tabs or newlines in a free-form answer would break the tab-separated line format.
            pred = " ".join((q.prediction or "").replace("\t", " ").splitlines())
            by_cat.setdefault(image.category, []).append(
                "\t".join((image.image_name, q.question, q.gt, pred)) + "\n"
            )
    for category, lines in by_cat.items():
        with open(os.path.join(out_dir, f"{category}.txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)


def eval_mme(
    answers_file: str,
    mme_dir: str,
    output_json: str | None = None,
    write_eval_tool_dir: str | None = None,
) -> dict:
    require_file(answers_file, "MME answers file", "Run llava.eval.model_vqa_loader on llava_mme.jsonl.")
    images = load_ground_truth(mme_dir)
    answered_order = _match_answers(answers_file, images)
    # Images in answer-file order, then the unanswered ones; calculation.py only needs pairs adjacent.
    ordered = [images[k] for k in answered_order]
    seen = set(answered_order)
    ordered += [img for k, img in sorted(images.items()) if k not in seen]

    stats: dict[str, dict] = {}
    for image in ordered:
        zero = {"questions": 0, "correct": 0, "images": 0, "images_correct": 0, "other": 0, "missing": 0}
        s = stats.setdefault(image.category, zero)
        all_right = True
        for q in image.questions:
            s["questions"] += 1
            if q.prediction is None:
                s["missing"] += 1
                all_right = False
                continue
            pred = parse_pred(q.prediction)
            s["other"] += pred == "other"
            right = pred == q.gt.lower()
            s["correct"] += right
            all_right &= right
        s["images"] += 1
        s["images_correct"] += all_right

    for s in stats.values():
        s["acc"] = 100.0 * s["correct"] / s["questions"]
        s["acc_plus"] = 100.0 * s["images_correct"] / s["images"]
        s["score"] = s["acc"] + s["acc_plus"]

    missing = sum(s["missing"] for s in stats.values())  # reported by _match_answers
    absent = [c for c in PERCEPTION + COGNITION if c not in stats]
    if absent:
        warn(f"subtasks missing from {mme_dir}: {', '.join(absent)}; they add 0 to the sums.")
    unknown = [c for c in stats if c not in PERCEPTION + COGNITION]
    if unknown:
        warn(f"folders that are not MME subtasks are scored but not summed: {', '.join(sorted(unknown))}.")

    perception = sum(stats[c]["score"] for c in PERCEPTION if c in stats)
    cognition = sum(stats[c]["score"] for c in COGNITION if c in stats)
    order = [c for c in PERCEPTION + COGNITION if c in stats] + sorted(unknown)
    summary = {
        "benchmark": "mme",
        "answers_file": os.path.abspath(answers_file),
        "mme_dir": os.path.abspath(mme_dir),
        "subtasks": {c: stats[c] for c in order},
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "missing": missing,
        "absent_subtasks": absent,
    }
    if write_eval_tool_dir:
        _write_eval_tool(write_eval_tool_dir, ordered)
    write_json(output_json or default_summary_path(answers_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--answers-file", required=True, help="LLaVA answers jsonl from llava_mme.jsonl")
    parser.add_argument("--mme-dir", required=True, help="the MME_Benchmark_release_version folder")
    parser.add_argument(
        "--output-json", default=None, help="summary JSON (default: <answers-file stem>_scores.json)"
    )
    parser.add_argument(
        "--write-eval-tool-dir", default=None, help="also write <cat>.txt files for MME's eval_tool here"
    )
    args = parser.parse_args(argv)
    summary = eval_mme(args.answers_file, args.mme_dir, args.output_json, args.write_eval_tool_dir)
    for name, s in summary["subtasks"].items():
        print(f"{name}: {s['score']:.2f}")
    print(f"Perception: {summary['perception']:.2f}")
    print(f"Cognition: {summary['cognition']:.2f}")
    print(f"Total: {summary['total']:.2f}")
    return summary


if __name__ == "__main__":
    run_cli(main)
