"""The vision stage (layer 0): methods that cut each image's tokens before the language model.

Every vision-stage method runs here on the tiny model: padded batches with text-only rows and two-image
prompts equal each row alone, the cache equals recomputation, the splice holds exactly the kept tokens with
ordinary positions, and the trace records the stage. Each method's own rule is pinned in its test file.
"""

import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.flops import stage_tokens
from entropyprune.methods import METHODS
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt

# One configuration per vision-stage method (and random at layer 0) that fits the tiny model (576 patches).
VISION_CONFIGS = {
    "random@0": dict(method="random", layer=0, keep=100),
    "cdpruner": dict(method="cdpruner", keep=40),
    "divprune": dict(method="divprune", keep=40),
    "vispruner": dict(method="vispruner", keep=40),
    "visionzip": dict(method="visionzip", keep=40),
    "prumerge": dict(method="prumerge"),  # adaptive: its own count per image, no budget
    "prumerge_plus": dict(method="prumerge_plus", keep=40, options={"adaptive": False}),
    "prumerge_plus@adaptive": dict(method="prumerge_plus"),
}
VISION_METHODS = sorted(name for name, spec in METHODS.items() if "vision" in spec.stages)


def test_every_vision_method_has_a_tiny_configuration():
    covered = {cfg["method"] for cfg in VISION_CONFIGS.values()}
    assert set(VISION_METHODS) <= covered, "add the new vision-stage method to VISION_CONFIGS"


def _ids(tok, question, image=True, images=1):
    prompt = vicuna_prompt(question, image=image)
    if images == 2:
        prompt = prompt.replace("<image>\n", "<image>\n<image>\n")
    return tokenizer_image_token(prompt, tok, return_tensors="pt")


def _batch(rows):
    width = max(len(x) for x in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, x in enumerate(rows):
        batch[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return batch, mask


def _kept(trace):
    return [[[(rec.layer, rec.length, rec.merged, rec.kept.tolist()) for rec in stages] for stages in row]
            for row in trace]


def test_keeping_every_patch_reproduces_the_unpruned_logits(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    ids = _ids(tok, "What is in the picture?")[None]
    px = process_images([make_image(seed=40)], proc, model.config)
    base = model(ids, images=px).logits
    model.set_prune(PruneConfig(method="random", layer=0, keep=576))
    out = model(ids, images=px).logits
    assert torch.equal(out, base)
    (rec,) = model.get_model().prune_trace[0][0]
    assert rec.layer == 0 and rec.length == 576 and rec.kept.tolist() == list(range(576))


def test_the_splice_holds_the_kept_projected_features_with_ordinary_positions(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    ids = _ids(tok, "What is in the picture?")[None]
    px = process_images([make_image(seed=41)], proc, model.config)
    model.set_prune(PruneConfig(method="random", layer=0, keep=37))
    sp = model.splice_multimodal(ids, px)
    (rec,) = sp.vision_trace[0][0]
    kept = rec.kept
    assert kept.tolist() == sorted(set(kept.tolist())) and len(kept) == 37
    assert sp.image_spans == [[(rec.start, 37)]]
    assert sp.position_ids[0].tolist() == list(range(sp.inputs_embeds.shape[1]))
    # Reference: the unpruned model's projected features of those patches, spliced as plain features.
    model.set_prune(None)
    feats = model.encode_images(px)[0]
    ref = model.splice_multimodal(ids, image_features=[feats[kept]])
    assert torch.allclose(sp.inputs_embeds, ref.inputs_embeds, atol=1e-6)
    logits_ref = model(inputs_embeds=ref.inputs_embeds).logits
    model.set_prune(PruneConfig(method="random", layer=0, keep=37))
    assert torch.allclose(model(ids, images=px).logits, logits_ref, atol=1e-5)


@pytest.mark.parametrize("name", sorted(VISION_CONFIGS))
def test_padded_batch_with_text_only_and_two_image_rows_equals_each_row_alone(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(**VISION_CONFIGS[name]))
    questions = ["Is there a dog in this picture?", "Say hi.", "What colour is the left one?"]
    rows = [_ids(tok, questions[0]), _ids(tok, questions[1], image=False), _ids(tok, questions[2], images=2)]
    images = [make_image(seed=50), make_image(w=300, h=420, seed=51), make_image(seed=52)]
    px = process_images(images, proc, model.config)
    batch, mask = _batch(rows)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=5, texts=questions)
    trace = _kept(model.get_model().prune_trace)
    assert [len(r) for r in trace] == [1, 0, 2]
    pixels_of = {0: px[0:1], 2: px[1:3]}
    for i, x in enumerate(rows):
        alone = model.generate(x[None], images=pixels_of.get(i), max_new_tokens=5, texts=[questions[i]])
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist(), (name, i)
        assert _kept(model.get_model().prune_trace)[0] == trace[i], (name, i)


@pytest.mark.parametrize("name", sorted(VISION_CONFIGS))
def test_cached_greedy_equals_recomputation(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(**VISION_CONFIGS[name]))
    ids = _ids(tok, "Describe it.")[None]
    px = process_images([make_image(seed=53)], proc, model.config)
    a = model.generate(ids, images=px, max_new_tokens=8, use_cache=True, texts="Describe it.")
    kept = _kept(model.get_model().prune_trace)
    b = model.generate(ids, images=px, max_new_tokens=8, use_cache=False, texts="Describe it.")
    assert a.tolist() == b.tolist()
    assert _kept(model.get_model().prune_trace) == kept


def test_hf_format_checkpoint_prunes_at_the_vision_stage_too(tiny_llava, tiny_hf):
    from llava.model.builder import load_pretrained_model

    outs = []
    for path in (tiny_llava, tiny_hf):
        tok, model, proc, _ = load_pretrained_model(path, device="cpu", torch_dtype="float32")
        model.set_prune(PruneConfig(method="random", layer=0, keep=64))
        ids = _ids(tok, "What is it?")[None]
        px = process_images([make_image(seed=54)], proc, model.config)
        outs.append((model(ids, images=px).logits, _kept(model.get_model().prune_trace)))
    assert outs[0][1] == outs[1][1]
    vocab = outs[0][0].shape[-1]  # the hf format pads its vocabulary
    assert torch.allclose(outs[0][0], outs[1][0][..., :vocab], atol=1e-5)


def test_vision_stage_budgets_and_accounting():
    # At layer 0 an average of T tokens over all layers is T tokens at every layer.
    for budget, n in ((dict(avg_tokens=192), 192), (dict(avg_tokens=64), 64), (dict(keep=7), 7),
                      (dict(ratio=0.25), 144), (dict(avg_tokens=100.9), 100)):
        stages = PruneConfig(method="random", layer=0, **budget).schedule(32, 576)
        assert [(s.layer, s.keep) for s in stages] == [(0, n)]
        assert stage_tokens(stages, 32, 576) == [n] * 32
    assert PruneConfig(method="random", keep=5).stage == "llm"  # its default stays inside the model
    assert PruneConfig(method="random", layer=0, keep=5).stage == "vision"


def test_texts_must_match_the_prompts(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="random", layer=0, keep=10))
    ids = _ids(tok, "What is it?")[None]
    px = process_images([make_image(seed=55)], proc, model.config)
    with pytest.raises(ValueError, match="one instruction string per prompt"):
        model.generate(ids, images=px, max_new_tokens=1, texts=["a", "b"])


def test_budget_record_of_a_vision_stage_run(loaded_tiny):
    from llava.eval.driver import budget_info

    model = loaded_tiny[1]
    info = budget_info(PruneConfig(method="random", layer=0, avg_tokens=64), model)
    assert (info["layer"], info["kept_tokens"], info["avg_tokens_equivalent"]) == (0, 64, 64.0)
