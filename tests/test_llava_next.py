"""LLaVA-1.6 (LLaVA-NeXT, anyres) against transformers' LlavaNext on the same tiny random weights.

The references are transformers' own classes: LlavaNextImageProcessorPil (pixels, image sizes),
LlavaNextForConditionalGeneration (feature count, logits, greedy tokens) and MistralForCausalLM. Our loader
reads the same weights in transformers' layout and in LLaVA's (`make_tiny_checkpoint --next`).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

# wide, tall, square, tiny, huge (width, height)
SIZES = [(20, 300), (300, 20), (64, 64), (8, 8), (1000, 700)]
PROMPT = "USER: <image>\nWhat is in the image? ASSISTANT:"


def _image(size, seed=0):
    rng = np.random.default_rng(seed + size[0] * 7 + size[1])
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def next_ckpts(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    root = tmp_path_factory.mktemp("next")
    return {"hf": build(str(root / "hf"), "hf", next_=True),
            "llava": build(str(root / "llava"), "llava", next_=True),
            "hf_mistral_old": build(str(root / "hfm"), "hf", next_=True, language_model="mistral", hf_layout="old"),
            "llava_mistral": build(str(root / "llm"), "llava", next_=True, language_model="mistral")}


def _reference(path, swap=False):
    """transformers' model and processor; `swap`: with each pinpoint reversed, i.e. reading the list in
    LLaVA's (width, height) order, which is what LLaVA's own code does with a LLaVA-format config."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil

    config = LlavaNextConfig.from_pretrained(path)
    kwargs = {}
    if swap:
        config.image_grid_pinpoints = [p[::-1] for p in config.image_grid_pinpoints]
        kwargs["image_grid_pinpoints"] = config.image_grid_pinpoints
    ref = LlavaNextForConditionalGeneration.from_pretrained(path, config=config, dtype=torch.float32).eval()
    return ref, LlavaNextImageProcessorPil.from_pretrained(path, **kwargs)


def _processor_count(path, image_processor, image):
    """How many <image> tokens transformers' LlavaNextProcessor expands the marker to (its own formula)."""
    from transformers import AutoTokenizer, LlavaNextProcessor

    tok = AutoTokenizer.from_pretrained(path)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", image_token="<image>",
                                   num_additional_image_tokens=1)
    out = processor(images=[image], text=["USER: <image>\nhi ASSISTANT:"], return_tensors="pt")
    return int((out["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum())


@pytest.fixture(scope="module")
def reference(next_ckpts):
    return _reference(next_ckpts["hf"])


@pytest.fixture(scope="module")
def llava_order_reference(next_ckpts):
    return _reference(next_ckpts["hf"], swap=True)


@pytest.fixture(scope="module")
def ours(next_ckpts):
    return {name: load_pretrained_model(path, device="cpu") for name, path in next_ckpts.items()}


def _ref_ids(ids, n_features, image_token_id):
    """transformers' prompt: the <image> token repeated once per feature (what its processor expands to)."""
    pos = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    return torch.cat([ids[:pos], torch.full((n_features,), image_token_id), ids[pos + 1:]])[None]


def _ref_run(ref, proc, image, ids):
    px = proc(images=[image], return_tensors="pt")
    with torch.no_grad():
        n = ref.model.get_image_features(px["pixel_values"], px["image_sizes"]).pooler_output[0].shape[0]
        ref_ids = _ref_ids(ids, n, ref.config.image_token_id)
        logits = ref(input_ids=ref_ids, pixel_values=px["pixel_values"], image_sizes=px["image_sizes"]).logits[0]
    return px, n, ref_ids, logits


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("fmt", ["hf", "llava"])
def test_pixels_tokens_logits_and_greedy_equal_transformers(reference, llava_order_reference, ours, size, fmt):
    ref, proc = reference if fmt == "hf" else llava_order_reference
    tok, model, image_processor, _ = ours[fmt]
    image = _image(size)
    ids = tokenizer_image_token(PROMPT, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
    px, n_ref, ref_ids, ref_logits = _ref_run(ref, proc, image, ids)

    pixels = process_images([image], image_processor, model.config)
    assert torch.equal(pixels[0], px["pixel_values"][0])  # one image: nothing padded on the view axis
    assert px["image_sizes"].tolist() == [[size[1], size[0]]]  # transformers' (height, width) of our (w, h)

    sp = model.splice_multimodal(ids[None], pixels, image_sizes=[image.size])
    (start, v), = sp.image_spans[0]
    assert v == n_ref == _processor_count(ref.config._name_or_path, proc, image)
    from llava.anyres import anyres_num_tokens
    tower = model.get_vision_tower()
    assert anyres_num_tokens(image.size, model.config, tower.num_patches_per_side, tower.config.image_size) == n_ref

    with torch.no_grad():
        logits = model(ids[None], images=pixels, image_sizes=[image.size]).logits[0]
    vocab = logits.shape[-1]  # LLaVA's format has no rows for the added <image> and <pad> tokens
    assert logits.shape[0] == ref_logits.shape[0]
    text = torch.ones(logits.shape[0], dtype=torch.bool)
    text[start:start + v] = False
    torch.testing.assert_close(logits[text], ref_logits[text, :vocab], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref_logits[:, :vocab], atol=1e-4, rtol=0)

    with torch.no_grad():
        mine = model.generate(ids[None], images=pixels, image_sizes=[image.size], max_new_tokens=6)[0]
        theirs = ref.generate(input_ids=ref_ids, pixel_values=px["pixel_values"], image_sizes=px["image_sizes"],
                              max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=0)[0, ref_ids.shape[1]:]
    assert mine.tolist() == theirs[: mine.numel()].tolist()


def test_layout_marks_the_newlines_crops_and_grid(reference, ours):
    """The layout's newline positions hold image_newline in transformers' features; crops and grid add up."""
    ref, proc = reference
    _, model, image_processor, _ = ours["hf"]
    image = _image((1000, 700))
    pixels = process_images([image], image_processor, model.config)
    sp = model.splice_multimodal(tokenizer_image_token(PROMPT, ours["hf"][0], return_tensors="pt")[None], pixels,
                                 image_sizes=[image.size])
    (lay,) = sp.image_layouts[0]
    px = proc(images=[image], return_tensors="pt")
    with torch.no_grad():
        feats = ref.model.get_image_features(px["pixel_values"], px["image_sizes"]).pooler_output[0]
    is_newline = (feats == ref.model.image_newline[None]).all(-1)
    assert torch.equal(lay.newline, is_newline) and lay.num_newlines == lay.grid[0]
    # 1000x700 fits the 2x2 canvas (168x168): 12x12 patches, unpadded to 8 rows (700/1000*12 = 8.4 -> 8)
    assert lay.crops == (2, 2) and lay.grid == (8, 12) and lay.base_tokens == 36
    assert lay.num_tokens == 36 + 8 * 13
    assert (lay.crop[:36] == 0).all() and set(lay.crop[36:].tolist()) == {-1, 1, 2, 3, 4}
    assert torch.equal(lay.crop == -1, lay.newline) and torch.equal(lay.patch == -1, lay.newline)
    # row r of the unpadded grid starts 2 patch rows down (the band cut above): crop row (r + 2) // 6
    grid = lay.crop[36:].view(8, 13)[:, :12]
    assert grid[0, 0] == 1 and grid[3, 11] == 2 and grid[4, 0] == 3 and grid[7, 11] == 4
    # LLaVA-1.5 images in the same splice have no layout
    assert model.splice_multimodal(torch.tensor([[1, 5, 6]])).image_layouts == [[]]


def test_mixed_shapes_in_one_padded_batch_equal_each_row_alone(ours):
    tok, model, image_processor, _ = ours["llava"]
    images = [_image(s) for s in [(300, 20), (64, 64), (20, 300)]]
    prompts = [PROMPT, "USER: <image>\nDescribe it in detail please. ASSISTANT:", "USER: <image>\nColour? ASSISTANT:"]
    ids = [tokenizer_image_token(p, tok, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
    pixels = process_images(images, image_processor, model.config)
    assert isinstance(pixels, list) and len({p.shape[0] for p in pixels}) == 2  # 3 and 4 views: not stackable
    width = max(i.numel() for i in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, row in enumerate(ids):
        batch[b, : row.numel()], mask[b, : row.numel()] = row, 1
    sizes = [im.size for im in images]
    with torch.no_grad():
        together = model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=5)
        sp = model.splice_multimodal(batch, pixels, attention_mask=mask, image_sizes=sizes)
        for b in range(len(ids)):
            alone = model.generate(ids[b][None], images=[pixels[b]], image_sizes=[sizes[b]], max_new_tokens=5)
            assert together[b, : alone.shape[1]].tolist() == alone[0].tolist()
    assert len({span[0][1] for span in sp.image_spans}) == 3  # every image has its own V


def test_mistral_language_model_equals_transformers_mistral(ours, next_ckpts):
    from transformers import LlavaNextForConditionalGeneration, MistralForCausalLM

    tok, model, image_processor, _ = ours["hf_mistral_old"]
    assert model.config.rope_theta == 1e6 and model.config.num_key_value_heads == 2
    assert model.config.sliding_window is None
    ref = LlavaNextForConditionalGeneration.from_pretrained(next_ckpts["hf_mistral_old"], dtype=torch.float32).eval()
    lm = MistralForCausalLM(ref.config.text_config).eval()
    lm.model.load_state_dict(ref.model.language_model.state_dict())
    lm.lm_head.load_state_dict(ref.lm_head.state_dict())
    ids = tokenizer_image_token("USER: hello there, how are you? ASSISTANT:", tok, return_tensors="pt")[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, lm(input_ids=ids).logits, atol=1e-4, rtol=0)
    # and with an image, against LlavaNext on a Mistral text model; LLaVA's format of the same weights too
    from transformers import LlavaNextImageProcessorPil

    proc = LlavaNextImageProcessorPil.from_pretrained(next_ckpts["hf_mistral_old"])
    image = _image((300, 20))
    ids = tokenizer_image_token(PROMPT, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
    _, _, _, ref_logits = _ref_run(ref, proc, image, ids)
    for name in ("hf_mistral_old", "llava_mistral"):
        _, m, ip, _ = ours[name]
        with torch.no_grad():
            logits = m(ids[None], images=process_images([image], ip, m.config), image_sizes=[image.size]).logits[0]
        torch.testing.assert_close(logits, ref_logits[:, : logits.shape[-1]], atol=1e-4, rtol=0)


def test_pinpoint_order_follows_each_format(ours):
    """A square image ties between the 1x2 and 2x1 canvases; the first in reading order wins. LLaVA reads
    [84, 168] as width 84, height 168 (two rows of crops); transformers reads it as height 84, width 168 (two
    columns). Each format follows its own implementation (the published pinpoints tie the same way)."""
    image = _image((64, 64))
    grids = {}
    for fmt in ("llava", "hf"):
        tok, model, image_processor, _ = ours[fmt]
        sp = model.splice_multimodal(tokenizer_image_token(PROMPT, tok, return_tensors="pt")[None],
                                     process_images([image], image_processor, model.config),
                                     image_sizes=[image.size])
        grids[fmt] = sp.image_layouts[0][0].crops
    assert grids == {"llava": (2, 1), "hf": (1, 2)}


def _with_config(src, dst, edit):
    path = shutil.copytree(src, dst)
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def test_sliding_window_refused_beyond_the_window(next_ckpts, tmp_path):
    def window(cfg):
        cfg["text_config"]["sliding_window"] = 40

    path = _with_config(next_ckpts["hf_mistral_old"], tmp_path / "w", window)
    tok, model, image_processor, _ = load_pretrained_model(path, device="cpu")
    ids = tokenizer_image_token("USER: hi ASSISTANT:", tok, return_tensors="pt")[None]
    model.generate(ids, max_new_tokens=3)  # within the window: full attention is the same
    with pytest.raises(ValueError, match=r"^the prompt plus max_new_tokens - 1 is \d+ tokens but this model's "
                                         r"sliding_window is 40"):
        model.generate(ids, max_new_tokens=40)
    image = _image((64, 64))
    with pytest.raises(ValueError, match=r"^the prompt is \d+ tokens but this model's sliding_window is 40"):
        model(tokenizer_image_token(PROMPT, tok, return_tensors="pt")[None],
              images=process_images([image], image_processor, model.config), image_sizes=[image.size])

    def no_window_key(cfg):  # MistralConfig's default then applies, as in transformers
        del cfg["text_config"]["sliding_window"]

    path = _with_config(next_ckpts["hf_mistral_old"], tmp_path / "d", no_window_key)
    from llava.model.language_model.configuration_llava import LlavaConfig
    assert LlavaConfig.from_pretrained(path).sliding_window == 4096


def test_transformers_save_pretrained_layout_loads(reference, tmp_path):
    """transformers 5's own save (model.language_model.*, model.image_newline, rope_parameters) loads as well."""
    ref, proc = reference
    out = tmp_path / "saved"
    ref.save_pretrained(out)
    proc.save_pretrained(out)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        shutil.copy(os.path.join(ref.config._name_or_path, f), out / f)
    tok, model, image_processor, _ = load_pretrained_model(str(out), device="cpu")
    image = _image((20, 300))
    ids = tokenizer_image_token(PROMPT, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
    _, _, _, ref_logits = _ref_run(ref, proc, image, ids)
    with torch.no_grad():
        logits = model(ids[None], images=process_images([image], image_processor, model.config),
                       image_sizes=[image.size]).logits[0]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)


def test_image_sizes_are_required_and_checked(ours):
    tok, model, image_processor, _ = ours["hf"]
    image = _image((300, 20))
    ids = tokenizer_image_token(PROMPT, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    pixels = process_images([image], image_processor, model.config)
    with pytest.raises(ValueError, match=r"^image_sizes are needed for LLaVA-1\.6"):
        model(ids, images=pixels)
    with pytest.raises(ValueError, match=r"^an image of 64x64 pixels gives 1x2 crops .* but its pixels hold 3 crops"):
        model(ids, images=pixels, image_sizes=[(64, 64)])
    with pytest.raises(ValueError, match=r"^image_sizes gives 2 size\(s\) for 1 image\(s\)"):
        model(ids, images=pixels, image_sizes=[image.size, image.size])


def test_vision_stage_methods_without_a_llava_next_path_are_refused(ours):
    """The vision-stage methods themselves: tests/test_llava_next_vision.py."""
    from entropyprune import PruneConfig

    _, model, _, _ = ours["hf"]
    with pytest.raises(ValueError, match=r"^--prune-method 'prumerge' at the vision stage is not supported for "
                                         r"LLaVA-1\.6 \(anyres\) checkpoints"):
        model.set_prune(PruneConfig(method="prumerge"))
    with pytest.raises(ValueError, match=r"^--prune-method visionzip on LLaVA-1\.6: .* strip_unpad=true"):
        model.set_prune(PruneConfig(method="visionzip", layer=0, keep=20))
    model.set_prune(None)


def test_conversation_templates_as_llava():
    conv = get_conv_template("mistral_instruct")
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == "[INST] <image>\nWhat is it? [/INST]"
    conv.messages[-1][1] = "A cat."
    assert conv.get_prompt() == "[INST] <image>\nWhat is it? [/INST] A cat. </s>"
    conv = get_conv_template("chatml_direct")
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == ("<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n"
                                 "What is it?<|im_end|><|im_start|>assistant\n")
    assert get_conv_template("mistral_direct").get_prompt() == "<|im_start|>system\nAnswer the questions.<|im_end|>"
    from llava.eval.run_llava import infer_conv_mode
    assert infer_conv_mode("llava-v1.6-mistral-7b") == "mistral_instruct"
    assert infer_conv_mode("llava-v1.6-34b") == "chatml_direct"
    assert infer_conv_mode("llava-v1.6-vicuna-7b") == "llava_v1"


# -- pruning inside the language model, images of different V in one padded batch ---------------------------

NEXT_CONFIGS = {  # fits the tiny LLaVA-1.6 model: 4 layers, V = 74 / 78 / 90 for the three images below
    "entropy": dict(layer=2, ratio=0.25),
    "random": dict(layer=2, keep=30),
    "fastv": dict(layer=2, keep=30),
    "pdrop": dict(ratio=0.5, options={"layer_list": "1,2,3"}),
    "sparsevlm": dict(avg_tokens=40, options={"pruning_loc": "0,1,2", "token_list": "40,20,10"}),
    "dart": dict(layer=2, keep=30),
}
BATCH_SIZES = [(300, 20), (64, 64), (20, 300)]


def test_every_in_llm_method_has_a_next_configuration():
    from entropyprune.methods import METHODS, method_stage

    assert {n for n in METHODS if method_stage(n) == "llm"} <= set(NEXT_CONFIGS), "add the method to NEXT_CONFIGS"


def _next_batch(tok, model, image_processor):
    images = [_image(s, seed=5) for s in BATCH_SIZES]
    questions = ["What is in the image?", "Describe it in detail, please.", "Colour?"]
    ids = [tokenizer_image_token(f"USER: <image>\n{q} ASSISTANT:", tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
           for q in questions]
    width = max(i.numel() for i in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, row in enumerate(ids):
        batch[b, : row.numel()], mask[b, : row.numel()] = row, 1
    return ids, batch, mask, process_images(images, image_processor, model.config), [im.size for im in images]


def _kept(trace):
    return [[[rec.kept.tolist() for rec in stages] for stages in row] for row in trace]


@pytest.mark.parametrize("keep_newlines", [False, True], ids=["newlines-prunable", "keep-newlines"])
@pytest.mark.parametrize("name", sorted(NEXT_CONFIGS))
def test_in_llm_methods_on_mixed_shapes_equal_each_row_alone(ours, name, keep_newlines):
    tok, model, image_processor, _ = ours["llava"]
    if keep_newlines and name == "sparsevlm":
        model.set_prune(PruneConfigFor(name, keep_newlines=True))
        ids, batch, mask, pixels, sizes = _next_batch(tok, model, image_processor)
        with pytest.raises(NotImplementedError, match=r"^--prune-keep-newlines is not supported with 'sparsevlm'"):
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=2)
        model.set_prune(None)
        return
    model.set_prune(PruneConfigFor(name, keep_newlines=keep_newlines))
    try:
        ids, batch, mask, pixels, sizes = _next_batch(tok, model, image_processor)
        with torch.no_grad():
            together = model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=4)
            trace = _kept(model.get_model().prune_trace)
            for b in range(len(ids)):
                alone = model.generate(ids[b][None], images=[pixels[b]], image_sizes=[sizes[b]], max_new_tokens=4)
                assert together[b, : alone.shape[1]].tolist() == alone[0].tolist(), (name, b)
                assert _kept(model.get_model().prune_trace)[0] == trace[b], (name, b)
    finally:
        model.set_prune(None)


def PruneConfigFor(name, **extra):  # noqa: N802  (reads as the config it builds)
    from entropyprune import PruneConfig

    return PruneConfig(method=name, **NEXT_CONFIGS[name], **extra)


def test_budget_follows_each_images_own_v_and_keep_newlines_keeps_them(ours):
    tok, model, image_processor, _ = ours["llava"]
    ids, batch, mask, pixels, sizes = _next_batch(tok, model, image_processor)
    sp = model.splice_multimodal(batch, pixels, attention_mask=mask, image_sizes=sizes)
    assert [row[0][1] for row in sp.image_spans] == [74, 78, 90]
    newlines = [row[0].newline.nonzero()[:, 0].tolist() for row in sp.image_layouts]
    assert [len(n) for n in newlines] == [2, 6, 18]  # grids 2x18, 6x6 (1x2 crops), 18x2: 72 other tokens each
    try:
        # ratio 0.25 of each image's own V, halves rounded up: 74 -> 18.5 -> 19, 78 -> 19.5 -> 20, 90 -> 22.5 -> 23
        model.set_prune(PruneConfigFor("entropy"))
        with torch.no_grad():
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=1)
        assert [len(row[0][-1].kept) for row in model.get_model().prune_trace] == [19, 20, 23]
        # keep_newlines: the budget is 0.25 of the 72 others (18), and every newline stays
        model.set_prune(PruneConfigFor("entropy", keep_newlines=True))
        with torch.no_grad():
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=1)
        kept = [row[0][-1].kept.tolist() for row in model.get_model().prune_trace]
        assert [len(k) for k in kept] == [18 + 2, 18 + 6, 18 + 18]
        assert all(set(n) <= set(k) and k == sorted(k) for n, k in zip(newlines, kept, strict=True))
        # multi-stage (PDrop): the newlines survive every stage
        model.set_prune(PruneConfigFor("pdrop", keep_newlines=True))
        with torch.no_grad():
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=1)
        for n, row in zip(newlines, model.get_model().prune_trace, strict=True):
            assert len(row[0]) == 3 and all(set(n) <= set(rec.kept.tolist()) for rec in row[0])
    finally:
        model.set_prune(None)


def test_a_keep_above_an_images_v_keeps_that_image_whole(ours, tiny_llava):
    """LLaVA-1.6: --prune-keep N with N above an image's own V keeps its V tokens (capped, in the trace); the
    fixed-V LLaVA-1.5 still refuses N > 576 when the budget is set."""
    from entropyprune import PruneConfig

    tok, model, image_processor, _ = ours["llava"]
    ids, batch, mask, pixels, sizes = _next_batch(tok, model, image_processor)
    try:
        # V = 74 / 78 / 90 (test above): keep 80 caps the first two, the third keeps 80
        model.set_prune(PruneConfig(method="fastv", layer=2, keep=80))
        with torch.no_grad():
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=1)
        recs = [row[0][-1] for row in model.get_model().prune_trace]
        assert [(r.length, len(r.kept), r.capped) for r in recs] == [(74, 74, True), (78, 78, True), (90, 80, False)]
        assert recs[0].kept.tolist() == list(range(74)) and recs[1].kept.tolist() == list(range(78))
        # with keep_newlines the cap is on the other tokens: 72 each (74-2, 78-6, 90-18), so 80 caps all three
        model.set_prune(PruneConfig(method="fastv", layer=2, keep=80, keep_newlines=True))
        with torch.no_grad():
            model.generate(batch, images=pixels, image_sizes=sizes, attention_mask=mask, max_new_tokens=1)
        assert [(len(row[0][-1].kept), row[0][-1].capped) for row in model.get_model().prune_trace] == [
            (74, True), (78, True), (90, True)]
        # the largest V of the tiny pinpoints: 168x168 is 2x2 crops, a 12x12 grid plus 12 newlines after the
        # 36-token base view, 192 in all; a keep above it prunes no image and is refused in one line
        model.set_prune(PruneConfig(method="fastv", layer=2, keep=192))
        with pytest.raises(ValueError, match=r"^--prune-keep 193 is more than the 192 visual tokens of the largest "
                                             r"image this checkpoint's pinpoints give.*use --prune-keep <= 192$"):
            model.set_prune(PruneConfig(method="fastv", layer=2, keep=193))
    finally:
        model.set_prune(None)
    _, model15, _, _ = load_pretrained_model(tiny_llava, device="cpu")
    with pytest.raises(ValueError, match=r"^--prune-keep 577 keeps 577 of 576 visual tokens after layer 2"):
        model15.set_prune(PruneConfig(method="fastv", layer=2, keep=577))


def test_image_schedule_caps_a_budget_above_v_by_each_methods_own_rule():
    from entropyprune import PruneConfig
    from entropyprune.methods import Stage

    # the real 7B's 130x16 image: V = 626 below --prune-keep 640 (docs/Reproduction.md)
    assert PruneConfig(method="fastv", layer=2, keep=640).image_schedule(32, 626) == ([Stage(2, 626)], True)
    assert PruneConfig(method="fastv", layer=2, keep=320).image_schedule(32, 626) == ([Stage(2, 320)], False)
    # DART's count within V: 4 image pivots + (4 + 4) x floor((626 - 4) / 8) = 4 + 8 x 77 = 620
    assert PruneConfig(method="dart", layer=2, keep=640).image_schedule(32, 626) == ([Stage(2, 620)], True)
    stages, capped = PruneConfig(method="pdrop", keep=640).image_schedule(32, 626)
    assert capped and [(st.layer, st.keep) for st in stages] == [(8, 626), (16, 626), (24, 626)]
    # avg_tokens above V: every layer keeps V
    assert PruneConfig(method="fastv", layer=2, avg_tokens=700).image_schedule(32, 626) == ([Stage(2, 626)], True)
    # a refusal for another reason names the budget as given, not the cap
    with pytest.raises(ValueError, match=r"got --prune-keep 640\)"):
        PruneConfig(method="sparsevlm", keep=640).image_schedule(32, 626)


def test_keep_newlines_flag():
    import argparse

    from llava.eval.prune_args import add_prune_args, prune_config_from_args

    ap = argparse.ArgumentParser()
    add_prune_args(ap)
    cfg = prune_config_from_args(ap.parse_args(["--prune-method", "entropy", "--prune-keep", "9",
                                                "--prune-keep-newlines"]))
    assert cfg.keep_newlines and cfg.to_dict()["keep_newlines"] is True
    assert "keep_newlines" not in prune_config_from_args(ap.parse_args(["--prune-method", "entropy",
                                                                       "--prune-keep", "9"])).to_dict()
    with pytest.raises(ValueError, match=r"^--prune-keep-newlines needs --prune-method"):
        prune_config_from_args(ap.parse_args(["--prune-keep-newlines"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from llava.tools import make_demo_data

    root = str(tmp_path_factory.mktemp("eval"))
    make_demo_data.build(root, seed=0, mme_images=1)
    return root


def test_driver_batches_llava_next_images_as_single_rows(ours, next_ckpts, demo, tmp_path):
    """model_vqa_loader on a LLaVA-1.6 checkpoint: images of different shapes batched (views kept per image,
    image_sizes passed) answer as at batch size 1, with pruning on as well."""
    from llava.eval import model_vqa_loader

    def run(name, *extra):
        answers = tmp_path / f"{name}.jsonl"
        model_vqa_loader.main(["--model-path", next_ckpts["llava"], "--question-file",
                               os.path.join(demo, "MME/llava_mme.jsonl"), "--image-folder",
                               os.path.join(demo, "MME/MME_Benchmark_release_version"), "--answers-file", str(answers),
                               "--temperature", "0", "--conv-mode", "vicuna_v1", "--max-new-tokens", "3", *extra],
                              loaded=ours["llava"])
        with open(answers, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]

    assert run("b1") == run("b4", "--batch-size", "4")
    prune = ("--prune-method", "entropy", "--prune-ratio", "0.3", "--prune-keep-newlines")
    try:
        assert run("p1", *prune) == run("p4", *prune, "--batch-size", "4")
    finally:
        ours["llava"][1].set_prune(None)


def test_config_round_trips_through_llava_layout(next_ckpts, tiny_llava):
    from llava.model.language_model.configuration_llava import LlavaConfig

    for path in (next_ckpts["llava"], next_ckpts["llava_mistral"], next_ckpts["hf"]):
        cfg = LlavaConfig.from_pretrained(path)
        again = LlavaConfig.from_dict(cfg.to_dict())
        assert (again.image_grid_pinpoints, again.mm_patch_merge_type, again.sliding_window, again.rope_theta) == (
            cfg.image_grid_pinpoints, cfg.mm_patch_merge_type, cfg.sliding_window, cfg.rope_theta)
    assert LlavaConfig.from_pretrained(next_ckpts["hf"]).image_grid_pinpoints[0] == [168, 84]  # (h, w) swapped
    written = LlavaConfig.from_pretrained(tiny_llava).to_dict()  # LLaVA-1.5: no LLaVA-1.6 keys appear
    assert not {"image_grid_pinpoints", "mm_patch_merge_type", "sliding_window"} & set(written)


def test_ecl_capture_reads_an_anyres_image(ours):
    from llava.tools.ecl.capture import layer_states

    tok, model, image_processor, _ = ours["hf"]
    image = _image((300, 20))
    ids = tokenizer_image_token(PROMPT, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    states, (_start, v) = layer_states(model, ids, process_images([image], image_processor, model.config),
                                       ("query",), image_sizes=[image.size])
    assert v == 74 and len(states["query"]) == 4 and states["query"][0].shape[0] == 74
