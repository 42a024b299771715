"""`python -m llava.eval.run_llava` end to end on the tiny checkpoint, and its flags."""

import pytest

from llava.conversation import build_prompt
from llava.eval import run_llava
from tests.conftest import make_image


def test_run_llava_cli_with_and_without_pruning(tmp_path, tiny_llava, capsys):
    img = tmp_path / "x.png"
    make_image(seed=4).save(img)
    base = ["--model-path", tiny_llava, "--image-file", str(img), "--query", "What is it?", "--temperature", "0",
            "--max_new_tokens", "6", "--device", "cpu", "--conv-mode", "vicuna_v1"]
    run_llava.main(base)
    vanilla = capsys.readouterr().out.strip()
    run_llava.main(base + ["--prune-method", "entropy", "--prune-layer", "2", "--prune-keep", "576"])
    assert capsys.readouterr().out.strip() == vanilla  # keeping every token changes nothing
    run_llava.main(base + ["--prune-method", "entropy", "--prune-layer", "2", "--prune-keep", "32"])
    assert capsys.readouterr().out.strip() != ""


def test_run_llava_flag_errors(tmp_path, tiny_llava, capsys):
    img = tmp_path / "x.png"
    make_image().save(img)
    base = ["--model-path", tiny_llava, "--image-file", str(img), "--query", "q", "--device", "cpu"]
    with pytest.raises(ValueError, match="--prune-keep needs --prune-method"):
        run_llava.main(base + ["--prune-keep", "10"])
    with pytest.raises(SystemExit):
        run_llava.main(base + ["--prune-method", "entropy", "--prune-keep", "10", "--prune-states", "value"])
    assert "--prune-states: invalid choice: 'value'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--prune-ratio must be a number in"):
        run_llava.main(base + ["--prune-method", "entropy", "--prune-ratio", "1.5"])
    with pytest.raises(ValueError, match="unknown --conv-mode"):
        run_llava.main(base + ["--conv-mode", "nope"])


def test_build_prompt_places_image_markers():
    p = build_prompt("Q?", "vicuna_v1", 1)
    assert p.endswith("USER: <image>\nQ? ASSISTANT:")
    p = build_prompt("Look <image-placeholder> here", "vicuna_v1", 1)
    assert "USER: Look <image> here ASSISTANT:" in p
    # A checkpoint trained with <im_start>/<im_end> gets them around every marker, as in LLaVA's run_llava.
    p = build_prompt("Q?", "vicuna_v1", 2, mm_use_im_start_end=True)
    assert "USER: <im_start><image><im_end>\n<im_start><image><im_end>\nQ? ASSISTANT:" in p
    assert "<im_start><image><im_end> here" in build_prompt("<image-placeholder> here", "vicuna_v1", 1, True)


def test_run_llava_bad_input_exits_2_with_one_line(tmp_path, tiny_llava):
    import subprocess
    import sys

    img = tmp_path / "x.png"
    make_image().save(img)
    base = [sys.executable, "-m", "llava.eval.run_llava", "--model-path", tiny_llava, "--image-file", str(img),
            "--query", "q", "--device", "cpu"]
    for extra, message in ((["--prune-keep", "10"], "--prune-keep needs --prune-method"),
                           (["--conv-mode", "nope"], "unknown --conv-mode 'nope'")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in proc.stderr
