"""Fault injection: each kind of fault a real run meets, built for real, through the real command line.

For every fault the test asserts the exit status, the single ``error:`` line (no traceback), and that no
answer or record is lost, duplicated or wrong afterwards. The faults:

- two processes writing one answers file (the same run started twice; two budgets given one file);
- ``kill -9`` and Ctrl-C in the middle of a run, then the same command again;
- a full disk, simulated with a file-size limit (``RLIMIT_FSIZE``) on the answers file, a scorer's
  summary and the run record;
- corrupt and truncated files: weights, config, question files, answers files, TSVs, images;
- bad flags and data that would otherwise give a silently wrong result or a traceback;
- an image of a few bytes that would cost gigabytes if it were padded as LLaVA pads it.

Library-level checks of the same rules are in test_load_errors.py, test_drivers.py, test_answer_rule.py and
test_cli_exits.py; this file runs them as a user meets them: one process per command.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from llava.tools import make_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
ENV.pop("ENTROPYPRUNE_DEBUG", None)
# Random weights rarely stop early: every answer is this many tokens, which keeps a run long enough to be
# caught in the middle (about 0.15 s per question on two CPU cores).
NEW_TOKENS = "8"

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX resource limits")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    make_demo_data.build(root, seed=0, mme_images=1)
    return root


def mme_args(ckpt, demo, answers, *extra):
    data = os.path.join(demo, "MME")
    return ["-m", "llava.eval.model_vqa_loader", "--model-path", ckpt, "--temperature", "0",
            "--question-file", os.path.join(data, "llava_mme.jsonl"),
            "--image-folder", os.path.join(data, "MME_Benchmark_release_version"),
            "--answers-file", str(answers), "--max-new-tokens", NEW_TOKENS, *extra]


def run(args, limit_bytes=None, **kw):
    """One command in its own process; with `limit_bytes`, no file it writes may grow beyond that size
    (the kernel's EFBIG, what a full disk looks like to a writer; SIGXFSZ is ignored so the write fails
    instead of killing the process)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_bytes is not None else None, **kw)


def start(args):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def error_line(stderr: str) -> str:
    """The one message of a failed command: no traceback, exactly one `error:` line (progress bars aside)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for chunk in stderr.splitlines() for line in chunk.split("\r")]
    errors = [line[line.index("error:"):] for line in lines if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def answers_of(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def key_text(answers):
    return [(a["question_id"], a["prompt"], a["text"]) for a in answers]


def wait_for_lines(path, n, proc, timeout=120):
    """Until `path` holds `n` complete answer lines (the process must still be running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted; make it longer"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read().count("\n") >= n:
                    return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.fixture(scope="module")
def reference(tiny_llava, demo, tmp_path_factory):
    """The answers of an uninterrupted run: what every faulted run must end with."""
    answers = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    done = run(mme_args(tiny_llava, demo, answers))
    assert done.returncode == 0, done.stderr
    out = answers_of(answers)
    assert len(out) == 28 and len({(a["question_id"], a["prompt"]) for a in out}) == 28
    return out


# -------------------------------------------------------------------------------------- concurrent writers


def test_a_second_writer_is_refused_at_once_and_the_first_finishes_intact(tiny_llava, demo, tmp_path, reference):
    answers = tmp_path / "a.jsonl"
    # Longer answers keep the first run going while the two others start (their imports take seconds).
    first = start(mme_args(tiny_llava, demo, answers, "--max-new-tokens", "48"))
    try:
        wait_for_lines(answers, 1, first)
        # The same run started twice, and another budget pointed at the same file: both refused, by the lock.
        others = [start(mme_args(tiny_llava, demo, answers, "--max-new-tokens", "48", *extra))
                  for extra in ((), ("--prune-method", "entropy", "--prune-keep", "64"))]
        for other in others:
            _, err = other.communicate(timeout=300)
            assert other.returncode == 2
            assert f"is being written by another run (process {first.pid} holds" in error_line(err)
        assert first.poll() is None, "the first run ended before the others were refused; make it longer"
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err
    written = answers_of(answers)  # each question once, in order, nothing from the refused runs
    assert [(a["question_id"], a["prompt"]) for a in written] == [(a["question_id"], a["prompt"]) for a in reference]
    assert json.loads((tmp_path / "a.jsonl.meta.json").read_text())["kept_tokens"] == 576


# ------------------------------------------------------------------------------------------- interruptions


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)],
                         ids=["kill-9", "ctrl-c"])
def test_an_interrupted_run_resumes_exactly(tiny_llava, demo, tmp_path, reference, sig, status):
    answers = tmp_path / "a.jsonl"
    proc = start(mme_args(tiny_llava, demo, answers))
    try:
        wait_for_lines(answers, 3, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # After Ctrl-C the message is printed and the process leaves with 130; now and then (a few runs in a
    # hundred on two busy cores) a torch thread aborts the exit after the message (SIGABRT, "terminate
    # called without an active exception"). Nothing is lost either way, which is what the rest checks.
    assert proc.returncode == status or (sig == signal.SIGINT and proc.returncode == -signal.SIGABRT), err
    if sig == signal.SIGINT:
        assert "interrupted" in error_line(err) and "rerun the same command to resume" in error_line(err)
    survivors = [json.loads(line) for line in answers.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 3 <= len(survivors) < 28
    assert key_text(survivors) == key_text(reference[:len(survivors)])

    again = run(mme_args(tiny_llava, demo, answers))
    assert again.returncode == 0, again.stderr
    resumed = answers_of(answers)
    assert key_text(resumed) == key_text(reference)
    # What was on disk is kept, not redone.
    assert [a["answer_id"] for a in resumed[:len(survivors)]] == [a["answer_id"] for a in survivors]
    assert json.loads((tmp_path / "a.jsonl.meta.json").read_text())["complete"] is True


# --------------------------------------------------------------------------------------------- a full disk


def test_a_full_disk_stops_the_run_with_the_file_named_and_a_rerun_completes_it(tiny_llava, demo, tmp_path,
                                                                               reference):
    answers = tmp_path / "a.jsonl"
    full = run(mme_args(tiny_llava, demo, answers), limit_bytes=3000)  # room for about 12 of 28 answers
    assert full.returncode == 2
    message = error_line(full.stderr)
    assert message.startswith(f"error: {answers}: File too large") and "resumes where it stopped" in message
    lines = answers.read_text().splitlines(keepends=True)
    complete = [json.loads(line) for line in lines if line.endswith("\n")]
    assert 0 < len(complete) < 28 and key_text(complete) == key_text(reference[:len(complete)])

    again = run(mme_args(tiny_llava, demo, answers))
    assert again.returncode == 0, again.stderr
    assert key_text(answers_of(answers)) == key_text(reference)


def test_a_full_disk_leaves_no_half_summary_and_no_half_record(tiny_llava, demo, tmp_path, reference):
    answers = tmp_path / "a.jsonl"
    assert run(mme_args(tiny_llava, demo, answers)).returncode == 0
    scores = tmp_path / "scores.json"
    score = ["-m", "llava.eval.eval_mme", "--answers-file", str(answers), "--output-json", str(scores),
             "--mme-dir", os.path.join(demo, "MME", "MME_Benchmark_release_version")]
    full = run(score, limit_bytes=64)
    assert full.returncode == 2
    assert error_line(full.stderr).startswith(f"error: {scores}: File too large")
    assert not scores.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]  # no temporary left
    assert run(score).returncode == 0 and json.loads(scores.read_text())["perception"] >= 0

    results = tmp_path / "results"
    record = ["-m", "llava.eval.record", "--benchmark", "mme", "--run-name", "r", "--answers", str(answers),
              "--scores-json", str(scores), "--results-dir", str(results)]
    full = run(record, limit_bytes=64)
    assert full.returncode == 2
    assert error_line(full.stderr).startswith(f"error: {results / 'mme' / 'r.json'}: File too large")
    assert not (results / "mme" / "r.json").exists()
    assert run(record).returncode == 0 and json.loads((results / "mme" / "r.json").read_text())["answers"] == 28


# ------------------------------------------------------------------------------ corrupt and truncated files


def _truncated_shard(ckpt):
    shard = os.path.join(ckpt, "model-00001-of-00002.safetensors")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    return "model-00001-of-00002.safetensors"


def _garbage_config(ckpt):
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write('{"hidden_size": 64,')
    return r"config\.json is not valid JSON"


def _no_tokenizer(ckpt):
    os.remove(os.path.join(ckpt, "tokenizer.model"))
    return r"no tokenizer in .*tokenizer\.model"


def _int_weights(ckpt):
    import torch
    from safetensors.torch import load_file, save_file

    shard = os.path.join(ckpt, "model-00002-of-00002.safetensors")
    tensors = load_file(shard)
    tensors = {k: (v.to(torch.int32) if k == "lm_head.weight" else v) for k, v in tensors.items()}
    save_file(tensors, shard, metadata={"format": "pt"})
    return r"lm_head\.weight holds torch\.int32 values"


def _config_field(**fields):
    def damage(ckpt):
        path = os.path.join(ckpt, "config.json")
        with open(path) as f:
            config = json.load(f)
        config.update(fields)
        with open(path, "w") as f:
            json.dump(config, f)
        return {"mm_vision_select_layer": r"mm_vision_select_layer 50 is out of range for a vision tower of 3",
                "model_type": r"model_type 'llava_mpt' is not supported"}[next(iter(fields))]
    return damage


CHECKPOINT_DAMAGE = {"truncated-shard": _truncated_shard, "garbage-config": _garbage_config,
                     "no-tokenizer": _no_tokenizer, "int-weights": _int_weights,
                     "select-layer": _config_field(mm_vision_select_layer=50),
                     "other-model-type": _config_field(model_type="llava_mpt")}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE), ids=list(CHECKPOINT_DAMAGE))
def test_a_broken_checkpoint_is_one_line_and_nothing_is_written(tiny_llava, demo, tmp_path, damage):
    ckpt = str(shutil.copytree(tiny_llava, tmp_path / "ckpt"))
    named = CHECKPOINT_DAMAGE[damage](ckpt)
    answers = tmp_path / "a.jsonl"
    done = run(mme_args(ckpt, demo, answers))
    assert done.returncode == 2
    assert re.search(named, error_line(done.stderr)), done.stderr
    assert not answers.exists()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_corrupt_and_truncated_data_files_are_named_by_file_and_line(tiny_llava, demo, tmp_path):
    mme = os.path.join(demo, "MME", "llava_mme.jsonl")
    with open(mme, encoding="utf-8") as f:
        lines = f.readlines()
    images = os.path.join(demo, "MME", "MME_Benchmark_release_version")

    def ask(questions, folder=images):
        return run(["-m", "llava.eval.model_vqa_loader", "--model-path", tiny_llava, "--temperature", "0",
                    "--question-file", str(questions), "--image-folder", folder,
                    "--answers-file", str(tmp_path / "out.jsonl"), "--max-new-tokens", "1", "--overwrite"])

    cut = _write(tmp_path / "cut.jsonl", "".join(lines[:3]) + lines[3][:25])  # a download cut short
    done = ask(cut)
    assert done.returncode == 2 and error_line(done.stderr).startswith(f"error: {cut}:4: ")
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(lines[0].encode() + lines[1].replace("Is", "Ist").encode("utf-8")[:-1] + b"\xe4\n")
    done = ask(binary)
    assert done.returncode == 2 and f"{binary}:2" in error_line(done.stderr)
    null_image = _write(tmp_path / "null.jsonl", json.dumps({**json.loads(lines[0]), "image": None}) + "\n")
    done = ask(null_image)
    assert done.returncode == 2 and f"{null_image}:1: 'image' must be a non-empty string" in error_line(done.stderr)
    done = ask(_write(tmp_path / "empty.jsonl", ""))
    assert done.returncode == 2 and "holds no questions" in error_line(done.stderr)

    # A truncated image: the answers before it are kept, the error names it, nothing after it is written.
    broken = tmp_path / "images"
    shutil.copytree(images, broken)
    target = json.loads(lines[2])["image"]
    with open(broken / target, "r+b") as f:
        f.truncate(200)
    done = ask(mme, folder=str(broken))
    assert done.returncode == 2 and f"cannot read image {broken / target}" in error_line(done.stderr)
    assert len(answers_of(tmp_path / "out.jsonl")) == 2

    # A truncated TSV (VLMEvalKit's format) and an answers file with a damaged line in the middle.
    tsv = os.path.join(demo, "mmstar", "MMStar.tsv")
    with open(tsv, encoding="utf-8") as f:
        rows = f.read().splitlines(keepends=True)
    short = _write(tmp_path / "short.tsv", "".join(rows[:2]) + rows[2][:40])
    done = run(["-m", "llava.eval.model_vqa_tsv", "--model-path", tiny_llava, "--question-file", str(short),
                "--answers-file", str(tmp_path / "tsv.jsonl")])
    assert done.returncode == 2 and error_line(done.stderr).startswith(f"error: {short}:3: ")
    answers = answers_of(tmp_path / "out.jsonl")
    damaged = _write(tmp_path / "damaged.jsonl", json.dumps(answers[0]) + "\n{\"question_id\": \n"
                     + json.dumps(answers[1]) + "\n")
    done = run(["-m", "llava.eval.eval_mme", "--answers-file", str(damaged), "--mme-dir", images,
                "--output-json", str(tmp_path / "s.json")])
    assert done.returncode == 2 and error_line(done.stderr).startswith(f"error: {damaged}:2: malformed JSON")
    assert not (tmp_path / "s.json").exists()


# ------------------------------------------------------------------------ answers that would mislead a score


def test_duplicate_and_unknown_answers_are_errors_in_the_scorer(tiny_llava, demo, tmp_path, reference):
    images = os.path.join(demo, "MME", "MME_Benchmark_release_version")
    twice = _write(tmp_path / "twice.jsonl", "".join(json.dumps(a) + "\n" for a in [*reference, reference[3]]))
    done = run(["-m", "llava.eval.eval_mme", "--answers-file", str(twice), "--mme-dir", images,
                "--output-json", str(tmp_path / "s.json")])
    assert done.returncode == 2 and f"{twice}:29" in error_line(done.stderr) and ":4" in error_line(done.stderr)
    unknown = _write(tmp_path / "unknown.jsonl", "".join(
        json.dumps(a) + "\n" for a in [*reference[:-1], {**reference[-1], "question_id": "nope/1.png"}]))
    done = run(["-m", "llava.eval.eval_mme", "--answers-file", str(unknown), "--mme-dir", images,
                "--output-json", str(tmp_path / "s.json")])
    assert done.returncode == 2 and f"{unknown}:28" in error_line(done.stderr)
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("flags, named", [
    (("--temperature", "nan"), "--temperature"), (("--temperature", "-1"), "--temperature"),
    (("--top_p", "5"), "--top_p"), (("--num_beams", "4"), "--num_beams"), (("--max_new_tokens", "0"), "new_tokens"),
    (("--prune-method", "entropy", "--prune-keep", "10000"), "--prune-keep"),
    (("--prune-method", "entropy", "--prune-layer", "9", "--prune-keep", "64"), "--prune-layer"),
])
def test_flags_that_cannot_work_stop_the_run_before_it_writes(tiny_llava, demo, tmp_path, flags, named):
    answers = tmp_path / "a.jsonl"
    done = run(mme_args(tiny_llava, demo, answers, *flags))
    assert done.returncode == 2 and named in error_line(done.stderr)
    assert not answers.exists()


# ---------------------------------------------------------------------------------------- bounded resources


def _peak_rss_mib(args) -> float:
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest of all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read()
    proc.stderr.close()
    return usage.ru_maxrss / 1024  # kilobytes on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux only")
def test_a_tiny_file_with_a_huge_side_costs_no_more_memory_than_an_ordinary_image(tiny_llava, tmp_path):
    Image.new("RGB", (20000, 1), (200, 30, 30)).save(tmp_path / "thin.png")  # a few hundred bytes
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "plain.png")
    assert os.path.getsize(tmp_path / "thin.png") < 2000

    def ask(image):
        return ["-m", "llava.eval.run_llava", "--model-path", tiny_llava, "--image-file", str(image),
                "--query", "What is it?", "--max_new_tokens", "1", "--temperature", "0"]

    plain, thin = _peak_rss_mib(ask(tmp_path / "plain.png")), _peak_rss_mib(ask(tmp_path / "thin.png"))
    # LLaVA's padding would build a 20000 x 20000 RGB square: 1144 MiB on its own.
    assert thin < plain + 150, (plain, thin)


def test_an_output_place_blocked_by_a_file_is_named(tiny_llava, demo, tmp_path):
    (tmp_path / "blocked").write_text("a file where the answers folder should be")
    done = run(mme_args(tiny_llava, demo, tmp_path / "blocked" / "a.jsonl"))
    assert done.returncode == 2
    assert error_line(done.stderr) == (f"error: cannot create the folder {tmp_path / 'blocked'}: a file of that name "
                                       "is in the way")
