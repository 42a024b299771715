"""`python -m llava.eval.run_llava` end to end on the tiny checkpoint, and its flags."""

import pytest

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
    with pytest.raises(SystemExit, match="--prune-keep needs --prune-method"):
        run_llava.main(base + ["--prune-keep", "10"])
    with pytest.raises(SystemExit):
        run_llava.main(base + ["--prune-method", "entropy", "--prune-keep", "10", "--prune-states", "value"])
    assert "--prune-states: invalid choice: 'value'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--prune-ratio must be a number in"):
        run_llava.main(base + ["--prune-method", "entropy", "--prune-ratio", "1.5"])
    with pytest.raises(ValueError, match="unknown --conv-mode"):
        run_llava.main(base + ["--conv-mode", "nope"])


def test_build_prompt_places_image_markers():
    p = run_llava.build_prompt("Q?", "vicuna_v1", 1)
    assert p.endswith("USER: <image>\nQ? ASSISTANT:")
    p = run_llava.build_prompt("Look <image-placeholder> here", "vicuna_v1", 1)
    assert "USER: Look <image> here ASSISTANT:" in p
