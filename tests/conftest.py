"""Shared fixtures: tiny checkpoints built once per test session, offline."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, torch.get_num_threads()))
# The shared tiny model's device: the CPU here; scripts/gpu/checks.sh sets cuda for the tests it reruns there.
TEST_DEVICE = os.environ.get("ENTROPYPRUNE_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    return build(str(tmp_path_factory.mktemp("ckpt") / "llava-v1.5-tiny"), "llava", seed=0)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    return build(str(tmp_path_factory.mktemp("ckpt") / "llava-1.5-tiny-hf"), "hf", seed=0)


@pytest.fixture(scope="session")
def loaded_tiny(tiny_llava):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(tiny_llava, device=TEST_DEVICE, torch_dtype="float32")


@pytest.fixture(autouse=True)
def _restore_loaded_tiny(request):
    """Tests share one loaded model; each gets it vanilla and leaves it as it found it.

    Whatever a test sets (pruning, attention implementation, train mode) is undone after it, so the suite
    passes in any order and any subset.
    """
    if "loaded_tiny" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("loaded_tiny")[1]
    lm = model.get_model()
    saved = (lm.prune, lm.config.attn_implementation, model.training)
    yield
    prune, impl, training = saved
    model.set_prune(prune)
    lm.set_attn_implementation(impl)
    model.train(training)


def make_image(w=400, h=300, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def vicuna_prompt(question: str, image: bool = True) -> str:
    from llava.conversation import conv_templates

    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def prompt_batch(tok, questions):
    """Right-padded ids and attention mask of one image prompt per question (Vicuna template)."""
    from llava.mm_utils import tokenizer_image_token

    rows = [tokenizer_image_token(vicuna_prompt(q), tok, return_tensors="pt") for q in questions]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask
