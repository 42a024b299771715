"""MM-Vet: the submission JSON for the official grader and, optionally, grading with an LLM judge.

    python -m llava.eval.eval_mmvet --result-file answers/ckpt.jsonl --output results/ckpt.json
    python -m llava.eval.eval_mmvet --result-file answers/ckpt.jsonl --output results/ckpt.json \
        --grade --mmvet-json playground/data/eval/mm-vet/mm-vet.json [--cache-file C] [--output-json S] \
        [--prompt-file P]

The submission is `{"v1_<question_id>": text, ...}` (indent 2), what LLaVA's convert_mmvet_for_eval.py
writes and what the official MM-Vet notebook, mm-vet_evaluator.py and the HF Space take. Prints
`Answers: N`.

Answers follow `llava.eval.answer_index`, keyed by sample (`v1_<question_id>`): two answers to one sample
and an empty answers file are errors. With --mmvet-json (needed for --grade, optional without it) an answer
to a sample mm-vet.json does not have is an error too, and the samples without an answer are reported
(`missing`; they score 0 when graded, as the official grader scores them); without it those two checks
cannot be made.

Grading (--grade) follows the official evaluator's protocol: one chat request per sample to any
OpenAI-compatible endpoint (environment: MMVET_API_BASE, default https://api.openai.com/v1;
MMVET_API_KEY; MMVET_MODEL, default gpt-4-0613) with a few-shot "Question | Ground truth | Prediction |
Correctness" table plus the sample's row with the last cell empty; temperature 0, max_tokens 3. The first
word of the reply must be a number in [0, 1]; otherwise the request is retried up to 5 times with a note
asking for just the number, at temperatures 0, 0.5, 1.0, 1.5 and 2.0 (2.0 is the API's maximum), and
the sample scores 0 if none parses. Total = 100 * mean score over all mm-vet.json samples (a sample
without an answer scores 0); each capability score = 100 * mean over the samples that
list it. Prints `Total: xx.xx` and one `<capability>: xx.xx` line per capability.

Graded answers are cached in a JSON file keyed by grader (model + prompt digest), question id and
prediction, written after every sample, so an interrupted or repeated run never re-queries them.

The built-in judge prompt is written for this project in the official format; GPT judges are sensitive to
wording, so for numbers comparable with published MM-Vet scores either grade the submission with the
official tool or pass its prompt text with --prompt-file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

from llava.eval import (
    EvalInputError,
    default_summary_path,
    load_json,
    read_jsonl,
    run_cli,
    write_json,
)
from llava.eval.answer_index import index_answers

DEFAULT_API_BASE = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4-0613"
MAX_TOKENS = 3
RETRY_TEMPERATURES = (0.0, 0.5, 1.0, 1.5, 2.0)
RETRY_NOTE = "\nReply with the correctness score only, a number from 0.0 to 1.0: "

GRADER_PROMPT = """\
Rate how correct an AI model's prediction is by comparing it with the ground truth. When the ground \
truth joins elements with <AND>, the prediction is fully correct only if it contains all of them; when \
it joins them with <OR>, containing any one of them is enough. Give one correctness score out of 0.0 \
(completely wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9 and 1.0 (completely right). Fill in \
only the empty last cell of the last row.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What two numbers are on the sign? | 12 <AND> 40 | 14 | 0.0
What two numbers are on the sign? | 12 <AND> 40 | 12 | 0.5
What two numbers are on the sign? | 12 <AND> 40 | The sign shows 40. | 0.5
What two numbers are on the sign? | 12 <AND> 40 | The numbers are 12 and 40. | 1.0
Which fruit is on the plate? | apple <OR> apples | A pear. | 0.0
Which fruit is on the plate? | apple <OR> apples | There are two apples on the plate. | 1.0
Why is this picture funny? | A large cat has squeezed itself into a cardboard box that is clearly \
far too small for it, yet it looks perfectly calm and content. The humour comes from the contrast \
between the cramped box and the cat's relaxed expression. | There is a cat in a box. | 0.3
Why is this picture funny? | A large cat has squeezed itself into a cardboard box that is clearly \
far too small for it, yet it looks perfectly calm and content. The humour comes from the contrast \
between the cramped box and the cat's relaxed expression. | It is funny because the cat is much too \
big for the tiny box it sits in, but it looks completely comfortable and satisfied, as if nothing \
were wrong. | 1.0
"""

# (messages, temperature) -> (reply text, name of the model that answered)
ChatFn = Callable[[list[dict], float], tuple[str, str]]


def submission_key(question_id) -> str:
    qid = str(question_id)
    return qid if qid.startswith("v1_") else f"v1_{qid}"


def build_submission(result_file: str, mmvet: dict | None = None) -> dict[str, str]:
    """{"v1_<question_id>": text}, by `llava.eval.answer_index`'s rule; with mm-vet.json's samples an answer
    to a sample it does not have is an error too, and the samples without an answer are reported."""
    index = index_answers(
        result_file, read_jsonl(result_file, "MM-Vet answers file", required=("question_id", "text")),
        benchmark="MM-Vet", key=lambda ans: submission_key(ans["question_id"]), known=mmvet,
        describe=lambda key: f"sample {key}", driver="llava.eval.model_vqa",
        unknown=lambda key, _: f"question_id {key} is not a sample of mm-vet.json",
    )
    if mmvet is not None:
        index.missing(mmvet)
    return {key: ans["text"] for key, ans in index.items()}


def parse_score(content: str | None) -> float | None:
    """The judge's score: the reply's first space-separated word as a number in [0, 1], else None."""
    if not content:
        return None
    try:
        score = float(content.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None  # also rejects nan


def judge_question(prompt: str, question: str, ground_truth: str, prediction: str) -> str:
    # Spaces around <AND>/<OR> as the official evaluator adds them; the trailing empty cell is the blank.
    gt = ground_truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt + "\n" + " | ".join([question, gt, prediction, ""])


def grade_one(chat: ChatFn, prompt: str, question: str, ground_truth: str, prediction: str) -> dict:
    text = judge_question(prompt, question, ground_truth, prediction)
    content, model = chat([{"role": "user", "content": text}], 0.0)
    score = parse_score(content)
    tries = 1
    for temperature in RETRY_TEMPERATURES:
        if score is not None:
            break
        content, model = chat([{"role": "user", "content": text + RETRY_NOTE}], temperature)
        score = parse_score(content)
        tries += 1
    return {"score": 0.0 if score is None else score, "content": content, "model": model, "tries": tries,
            "parsed": score is not None}


def openai_chat(api_base: str, api_key: str, model: str, timeout: float = 120.0, max_attempts: int = 6,
                sleep: Callable[[float], None] = time.sleep) -> ChatFn:
    """A ChatFn for an OpenAI-compatible /chat/completions endpoint, using only urllib."""
    url = api_base.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def chat(messages: list[dict], temperature: float) -> tuple[str, str]:
        body = json.dumps({"model": model, "messages": messages, "temperature": temperature,
                           "max_tokens": MAX_TOKENS}).encode("utf-8")
        last_error = ""
        for attempt in range(max_attempts):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"] or "", reply.get("model", model)
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                # Rate limits and server hiccups are worth waiting out; anything else (bad key, bad model
                # name) will not get better by retrying.
                if e.code not in (408, 409, 429, 500, 502, 503, 504):
                    raise EvalInputError(
                        f"grading endpoint {url} answered HTTP {e.code}: {detail}. Check MMVET_API_BASE, "
                        "MMVET_API_KEY and MMVET_MODEL."
                    ) from None
                last_error = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last_error = str(e)
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                raise EvalInputError(f"grading endpoint {url} sent an unexpected reply ({e!r}).") from None
            if attempt + 1 < max_attempts:
                sleep(min(60.0, 2.0 ** (attempt + 1)))
        raise EvalInputError(
            f"grading endpoint {url} failed {max_attempts} times (last: {last_error}); answers graded so "
            "far are cached, rerun to continue."
        )

    return chat


class GradeCache:
    """Graded answers keyed by grader, question id and prediction, saved after every new grade."""

    def __init__(self, path: str | None, grader: str) -> None:
        self.path = path
        self.grader = grader
        self.data: dict = {"version": 1, "graders": {}}
        if path and os.path.exists(path):
            self.data = load_json(path, "MM-Vet grade cache", "Delete it to start over.")
            if not isinstance(self.data, dict) or "graders" not in self.data:
                raise EvalInputError(f"{path} is not an MM-Vet grade cache; delete it or pass --cache-file.")
        self._mine = self.data["graders"].setdefault(grader, {})

    def get(self, qid: str, prediction: str) -> dict | None:
        return self._mine.get(qid, {}).get(prediction)

    def put(self, qid: str, prediction: str, grade: dict) -> None:
        self._mine.setdefault(qid, {})[prediction] = grade
        if self.path:
            write_json(self.path, self.data)


def grader_key(model: str, prompt: str) -> str:
    return f"{model}|prompt-sha1:{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:12]}"


def grade_submission(submission: dict[str, str], mmvet: dict, chat: ChatFn, model: str,
                     prompt: str = GRADER_PROMPT, cache_path: str | None = None) -> dict:
    cache = GradeCache(cache_path, grader_key(model, prompt))
    per_sample = {}
    missing = queried = unparsed = 0
    for qid, item in mmvet.items():
        for key in ("question", "answer", "capability"):
            if key not in item:
                raise EvalInputError(f"mm-vet.json: {qid} lacks {key!r}; re-download mm-vet.zip.")
        prediction = submission.get(qid)
        if prediction is None:
            missing += 1
            per_sample[qid] = {"score": 0.0, "missing": True}
            continue
        grade = cache.get(qid, prediction)
        if grade is None:
            grade = grade_one(chat, prompt, item["question"], item["answer"], prediction)
            cache.put(qid, prediction, grade)
            queried += 1
        unparsed += not grade.get("parsed", True)
        per_sample[qid] = {"score": grade["score"], "missing": False}

    counts: Counter = Counter()
    sums: Counter = Counter()
    int_counts: Counter = Counter()
    int_sums: Counter = Counter()
    for qid, item in mmvet.items():
        caps = list(dict.fromkeys(item["capability"]))  # de-duplicated, in mm-vet.json's order
        score = per_sample[qid]["score"]
        for cap in caps:
            counts[cap] += 1
            sums[cap] += score
        combo = "_".join(sorted(caps))
        int_counts[combo] += 1
        int_sums[combo] += score
    total = 100.0 * sum(s["score"] for s in per_sample.values()) / len(mmvet) if mmvet else float("nan")
    return {
        "total": total,
        # Most common capability first, the order of the official score table.
        "capabilities": {c: 100.0 * sums[c] / n for c, n in counts.most_common()},
        "capability_integrations": {c: 100.0 * int_sums[c] / n for c, n in int_counts.most_common()},
        "samples": len(mmvet),
        "missing": missing,
        "newly_graded": queried,
        "unparsed_grades": unparsed,
        "scores": {qid: s["score"] for qid, s in per_sample.items()},
    }


def eval_mmvet(result_file: str, output: str, grade: bool = False, mmvet_json: str | None = None,
               cache_file: str | None = None, output_json: str | None = None,
               prompt: str = GRADER_PROMPT, chat: ChatFn | None = None) -> dict:
    """Write the submission; with grade=True also grade it (chat defaults to the environment's endpoint)."""
    if grade and not mmvet_json:
        raise EvalInputError("--grade needs --mmvet-json pointing at mm-vet.json from mm-vet.zip.")
    mmvet = None
    if mmvet_json:
        fix = "Download https://github.com/yuweihao/MM-Vet/releases/download/v1/mm-vet.zip and unzip it."
        mmvet = load_json(mmvet_json, "mm-vet.json", fix)
        if not isinstance(mmvet, dict) or not mmvet:
            raise EvalInputError(f"{mmvet_json}: expected a non-empty object of samples. {fix}")
    submission = build_submission(result_file, mmvet)
    write_json(output, submission)
    summary = {"benchmark": "mmvet", "result_file": os.path.abspath(result_file),
               "submission": os.path.abspath(output), "answers": len(submission)}
    if mmvet is not None:
        summary.update(samples=len(mmvet), missing=sum(qid not in submission for qid in mmvet))
    if not grade:
        return summary

    model = os.environ.get("MMVET_MODEL") or DEFAULT_MODEL
    if chat is None:
        api_base = os.environ.get("MMVET_API_BASE") or DEFAULT_API_BASE
        api_key = os.environ.get("MMVET_API_KEY", "")
        if not api_key and api_base == DEFAULT_API_BASE:
            raise EvalInputError("grading needs MMVET_API_KEY (and optionally MMVET_API_BASE, MMVET_MODEL).")
        chat = openai_chat(api_base, api_key, model)
    if cache_file is None:
        cache_file = os.path.splitext(output)[0] + "_grade_cache.json"
    graded = grade_submission(submission, mmvet, chat, model, prompt, cache_file)
    summary.update(graded, grader_model=model, cache_file=os.path.abspath(cache_file))
    write_json(output_json or default_summary_path(output), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--result-file", required=True, help="LLaVA answers jsonl (model_vqa)")
    parser.add_argument("--output", required=True, help="submission JSON {v1_<id>: text}")
    parser.add_argument("--grade", action="store_true", help="also grade with an LLM judge (network)")
    parser.add_argument("--mmvet-json", default=None,
                        help="mm-vet.json (questions, answers, capabilities); also checks the answers' ids")
    parser.add_argument(
        "--cache-file", default=None, help="grade cache (default: <output stem>_grade_cache.json)"
    )
    parser.add_argument(
        "--output-json", default=None, help="grading summary JSON (default: <output stem>_scores.json)"
    )
    parser.add_argument(
        "--prompt-file", default=None, help="judge prompt text to use instead of the built-in one"
    )
    args = parser.parse_args(argv)
    prompt = GRADER_PROMPT
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise EvalInputError(f"--prompt-file not found: {args.prompt_file}.")
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    s = eval_mmvet(args.result_file, args.output, args.grade, args.mmvet_json, args.cache_file,
                   args.output_json, prompt)
    print(f"Answers: {s['answers']}")
    if args.grade:
        print(f"Total: {s['total']:.2f}")
        for cap, score in s["capabilities"].items():
            print(f"{cap}: {score:.2f}")
    return s


if __name__ == "__main__":
    run_cli(main)
