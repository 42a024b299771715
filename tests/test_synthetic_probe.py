"""The recipe-finding loop (llava.tools.synthetic_probe): its questions are right about the scenes, its
conversations never repeat a question, and a run is a function of its seed."""

import json
import os
import random

import pytest

from llava.tools import make_synthetic_data as S
from llava.tools import synthetic_probe as P


def test_colour_existence_is_right_about_the_scene():
    for i in range(200):
        scene = S.make_scene(S.stream(0, "probe", i))
        present = {o[1] for o in scene.objects}
        for want in (True, False):
            q, answer = P.colour_existence(random.Random(i), scene, want)
            colour = q.split()[3]
            assert answer == (colour in present)
            assert answer == want or len(present) == len(S.COLOURS)  # a No is asked whenever one exists


def test_conversations_never_repeat_a_question_and_hints_go_without_the_image():
    rng = random.Random(0)
    for i in range(50):
        scene = S.make_scene(S.stream(0, "probe", i))
        conv, image = P.conversation(rng, scene, ["colour_existence", "color", "colours"], 8)
        questions = [t["value"] for t in conv[::2]]
        assert len(questions) == len(set(questions)) and image
        assert questions[0].startswith("<image>\n") and not any("<image>" in q for q in questions[1:])
        conv, image = P.conversation(rng, scene, ["colour_hint"], 3)
        assert not image and all(t["value"].startswith("Colors: ") for t in conv[::2])
        colours = conv[0]["value"].split(".")[0][len("Colors: "):].split(", ")
        assert sorted(colours) == sorted({o[1] for o in scene.objects})


@pytest.mark.parametrize("text, message", [
    ("colour_hint", "is not KINDS:STEPS:TRAINS"),
    ("colour_hint:x:all", "is not KINDS:STEPS:TRAINS"),
    ("shapes:3:all", "kinds are"),
    ("color:0:all", "STEPS >= 1"),
    ("color:3:tower", "TRAINS all or projector"),
])
def test_bad_phases_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        P.parse_phases(text)


def test_a_run_logs_every_evaluation_and_repeats_with_its_seed(tmp_path):
    from llava.tools.make_synthetic_data import build as make_data
    from llava.tools.make_tiny_checkpoint import build as make_base

    data = str(tmp_path / "data")
    make_data(data, seed=0, train=12, test=2, turns=2)
    base = make_base(str(tmp_path / "base"), "llama", tower_kind="colour")
    logs = []
    for run in ("a", "b"):
        out = str(tmp_path / run)
        P.main(["--data", data, "--checkpoint", base, "--out", out, "--phases",
                "colour_hint:2:all;colour_existence,color:2:projector", "--eval-every", "2", "--hidden-size", "32",
                "--layers", "1", "--heads", "2", "--batch-size", "2", "--turns", "2"])
        with open(os.path.join(out, "log.jsonl"), encoding="utf-8") as f:
            logs.append([json.loads(line) for line in f])
    a, b = logs
    assert [e["step"] for e in a] == [2, 4] and [e["phase"] for e in a] == ["colour_hint", "colour_existence,color"]
    keys = {*S.MME_SUBTASKS, "colour_existence", "colour_hint"}
    assert all(keys <= set(e) and all(0 <= e[k] <= 100 for k in keys) for e in a)
    assert [{k: v for k, v in e.items() if k != "cpu_s"} for e in a] == [
        {k: v for k, v in e.items() if k != "cpu_s"} for e in b]
