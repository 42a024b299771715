"""Every command-line tool: a usage or input error is one `error:` line on stderr and exit status 2."""

import subprocess
import sys

import pytest

CASES = [
    (["-m", "llava.bench.efficiency", "--methods", "nope"], "--methods: 'nope' is not a registered method"),
    (["-m", "llava.bench.efficiency", "--budgets", "x"], "--budgets 'x': expected a comma-separated list"),
    (["-m", "llava.bench.throughput", "--arch", "tiny", "--batch-sizes", "0,2"],
     "--batch-sizes '0,2': expected integers >= 1"),
    (["-m", "llava.bench.throughput", "--arch", "tiny", "--methods", "none,nope"],
     "--methods: 'nope' is not a registered in-LLM method"),
    (["-m", "llava.cli", "report", "/nonexistent/results"], "/nonexistent/results"),
    (["-m", "llava.tools.make_demo_data", "--root", "/proc/version/x"], "error"),
    (["-m", "llava.eval.eval_mme", "--answers-file", "/nonexistent.jsonl", "--mme-dir", "/nonexistent"], "not found"),
    (["-m", "llava.eval.run_llava", "--model-path", "/nonexistent/ckpt", "--image-file", "x.png", "--query", "q",
      "--prune-keep", "3"], "--prune-keep needs --prune-method"),
    (["-m", "llava.eval.model_vqa_loader", "--model-path", "x", "--question-file", "/nonexistent.jsonl",
      "--answers-file", "/tmp/entropyprune-none.jsonl", "--prune-method", "fastv", "--prune-keep", "8",
      "--prune-option", "nope=1"], "method 'fastv' has no options, got nope"),
    # --out is written last: a file there (or an unwritable place) must stop ecl before it profiles anything.
    (["-m", "llava.cli", "ecl", "--model-path", "/nonexistent/ckpt", "--question-file", "/nonexistent.jsonl",
      "--out", "/proc/version"], "--out /proc/version is a file, not a folder"),
    (["-m", "llava.cli", "ecl", "--model-path", "/nonexistent/ckpt", "--question-file", "/nonexistent.jsonl",
      "--out", "/proc/version/sub"], "cannot be written (/proc/version is not a writable folder)"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[0][1] for c in CASES])
def test_bad_input_exits_2_with_one_message(args, message):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") or "error:" in last
    assert message in proc.stderr


BAD_DECODING = [
    (["--temperature", "nan"], "--temperature: expected a finite number >= 0, got 'nan'"),
    (["--temperature", "-1"], "--temperature: expected a finite number >= 0, got '-1'"),
    (["--top_p", "5"], "--top_p/--top-p: expected a finite number in (0, 1], got '5'"),
    (["--top-p", "0"], "got '0'"),
    (["--top_p", "inf"], "got 'inf'"),
    (["--num_beams", "4"], "beam search is not supported (got 4)"),
    (["--max_new_tokens", "0"], "expected an integer >= 1, got 0"),
]


def _parsers():
    from llava.eval import run_llava
    from llava.eval.driver import build_parser

    required = {"model_vqa_loader": ["--model-path", "m", "--question-file", "q.jsonl"],
                "run_llava": ["--model-path", "m", "--image-file", "x.png", "--query", "q"]}
    yield build_parser("every benchmark driver", max_new_tokens=128), required["model_vqa_loader"]
    yield run_llava.build_parser(), required["run_llava"]


@pytest.mark.parametrize("flags,message", BAD_DECODING, ids=[" ".join(f) for f, _ in BAD_DECODING])
def test_decoding_flags_are_checked_when_parsed(flags, message, capsys):
    # A value generate() cannot use (or that makes the run impossible to resume: nan) stops at parse time.
    for parser, required in _parsers():
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(required + flags)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_decoding_flags_in_range_are_accepted():
    for parser, required in _parsers():
        args = parser.parse_args(required + ["--temperature", "0", "--top_p", "1", "--num_beams", "1"])
        assert (args.temperature, args.top_p, args.num_beams) == (0.0, 1.0, 1)
        assert parser.parse_args(required).temperature == 0.2  # LLaVA's default
