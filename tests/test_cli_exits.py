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
