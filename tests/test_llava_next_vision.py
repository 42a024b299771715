"""Vision-stage methods on LLaVA-1.6 (tiny `make_tiny_checkpoint --next` model: 84 px tower, 6x6 = 36 patches
per view, 4 layers), against references written here from each official LLaVA-NeXT path on transformers' own
CLIPModel / CLIPVisionModel (the views) or LlavaNextModel (the merged sequence).

- cdpruner, vispruner (``strip_unpad=true``): every view pruned with the budget per view; the kept tokens of
  the base view (ascending), then the crop grid read row by row, no unpad, no newline.
- visionzip (``strip_unpad=true``): every view's CLS + dominant + contextual tokens; the base view's in that
  order, then the crops' dominant patches on the crop grid, each crop's CLS, each crop's contextual tokens.
- divprune: the max-min picks on the image's merged sequence (unpad and newlines, as the model splices it),
  ``int(round(ratio * V))`` of them.
"""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from entropyprune import PruneConfig
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.tools.make_tiny_checkpoint import NEXT_PINPOINTS, NEXT_TOWER_DIR
from tests.test_cdpruner import greedy_logdet
from tests.test_divprune import official_picks
from tests.test_visionzip import official_visionzip, transformers_quantities
from tests.test_vispruner import official_kept

SIDE, PER_VIEW = 6, 36
# width x height; the third is square, a tie between the 1x2 and 2x1 canvases that each format breaks its own way
SIZES = [(300, 20), (20, 300), (64, 64)]
QUESTIONS = ["What is in the image?", "Describe it in detail, please.", "Colour?"]

# The LLaVA-NeXT test table of vision-stage methods (budget per view for the per-view ones).
NEXT_VISION_CONFIGS = {
    "cdpruner": dict(keep=6, options={"strip_unpad": True}),
    "vispruner": dict(keep=8, options={"strip_unpad": True, "important_ratio": 0.5}),
    "visionzip": dict(keep=9, options={"strip_unpad": True, "dominant": 6, "contextual": 3}),
    "divprune": dict(ratio=0.25),
}
REFUSED = {"prumerge", "prumerge_plus", "random"}  # no LLaVA-NeXT path in their official code


def _image(size, seed=0):
    rng = np.random.default_rng(seed + size[0] * 7 + size[1])
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    root = tmp_path_factory.mktemp("nextvis")
    return {"llava": build(str(root / "llava"), "llava", next_=True), "hf": build(str(root / "hf"), "hf", next_=True)}


@pytest.fixture(scope="module")
def loaded(ckpts):
    return {fmt: load_pretrained_model(path, device="cpu") for fmt, path in ckpts.items()}


@pytest.fixture(scope="module")
def clip(ckpts):
    from transformers import AutoTokenizer, CLIPModel

    folder = os.path.join(ckpts["llava"], NEXT_TOWER_DIR)
    return CLIPModel.from_pretrained(folder, attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(folder)


def _config(name, fmt, ckpts):
    cfg = dict(NEXT_VISION_CONFIGS[name])
    if name == "cdpruner" and fmt == "hf":  # a llava-hf config names no CLIP checkpoint: the same tiny CLIP's
        cfg["options"] = {**cfg["options"], "clip_text_tower": os.path.join(ckpts["llava"], NEXT_TOWER_DIR)}
    return PruneConfig(method=name, **cfg)


def _batch(tok, model, proc, sizes=SIZES, questions=QUESTIONS):
    images = [_image(s, seed=5) for s in sizes]
    ids = [tokenizer_image_token(f"USER: <image>\n{q} ASSISTANT:", tok, IMAGE_TOKEN_INDEX, return_tensors="pt")
           for q in questions]
    width = max(i.numel() for i in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, row in enumerate(ids):
        batch[b, : row.numel()], mask[b, : row.numel()] = row, 1
    return ids, batch, mask, process_images(images, proc, model.config), [im.size for im in images]


def _crop_grid(size, fmt):
    """(crop rows, crop cols) by transformers' own grid function, with the pinpoints in each format's reading:
    LLaVA's config lists them as [width, height], transformers reads [height, width]."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    pinpoints = [p[::-1] for p in NEXT_PINPOINTS] if fmt == "llava" else NEXT_PINPOINTS
    return get_anyres_image_grid_shape((size[1], size[0]), pinpoints, 84)


def _spatial_order(kept_per_view, grid):
    """The official spatial merge of per-view kept sets: the base view's kept patches ascending, then the crop
    grid (crop rows x 6 by crop cols x 6) row by row, a patch where its crop kept it. Flat view * 36 + patch."""
    rows, cols = grid
    out = [p for p in sorted(kept_per_view[0])]
    for r in range(rows * SIDE):
        for c in range(cols * SIDE):
            crop = 1 + (r // SIDE) * cols + c // SIDE
            patch = (r % SIDE) * SIDE + c % SIDE
            if patch in kept_per_view[crop]:
                out.append(crop * PER_VIEW + patch)
    return out


def _span(model, batch, mask, px, sizes, row, texts=None):
    sp = model.splice_multimodal(batch, px, attention_mask=mask, image_sizes=sizes, texts=texts)
    ((start, n),) = sp.image_spans[row]
    return sp.inputs_embeds[row, start:start + n]


# -- CDPruner ------------------------------------------------------------------------------------------------

def _cdpruner_reference(clip, projector, views, question, n):
    """The official encode_images on one image's views (batch 1): per view the greedy MAP of
    diag(r) S diag(r); r's min and max over every view of the image (the official batch of views)."""
    model, tokenizer = clip
    with torch.no_grad():
        hidden = model.vision_model(views, output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = projector(hidden).double()
        img = model.visual_projection(model.vision_model.post_layernorm(hidden)).double()
        text = model.get_text_features(**tokenizer(question, return_tensors="pt"))
        text = getattr(text, "pooler_output", text).double()
    unit = projected / projected.norm(dim=-1, keepdim=True)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = text / text.norm(dim=-1, keepdim=True)
    rel = (-(img @ txt.T)).mean(-1)  # [views, 36]
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
    kept = []
    for v in range(views.shape[0]):
        kernel = rel[v][:, None] * (unit[v] @ unit[v].T) * rel[v][None, :]
        kept.append(greedy_logdet(kernel.numpy(), n))
    return kept, projected


@pytest.mark.parametrize("fmt", ["llava", "hf"])
def test_cdpruner_keeps_the_official_tokens_of_every_view_in_the_spatial_order(loaded, clip, ckpts, fmt):
    tok, model, proc, _ = loaded[fmt]
    n = NEXT_VISION_CONFIGS["cdpruner"]["keep"]
    model.set_prune(_config("cdpruner", fmt, ckpts))
    try:
        ids, batch, mask, px, sizes = _batch(tok, model, proc)
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes, texts=QUESTIONS)
            trace = model.get_model().prune_trace
            projector = model.get_model().mm_projector
            for row, size in enumerate(sizes):
                grid = _crop_grid(size, fmt)
                views = px[row]
                assert views.shape[0] == 1 + grid[0] * grid[1]
                kept, projected = _cdpruner_reference(clip, projector, views, QUESTIONS[row], n)
                (rec,) = trace[row][0]
                order = _spatial_order(kept, grid)
                assert rec.layer == 0 and rec.length == views.shape[0] * PER_VIEW and not rec.capped
                assert rec.kept.tolist() == order and len(order) == views.shape[0] * n  # n per view
                expected = projected.reshape(-1, projected.shape[-1])[order].float()
                torch.testing.assert_close(_span(model, batch, mask, px, sizes, row, QUESTIONS), expected,
                                           atol=1e-5, rtol=1e-4)
    finally:
        model.set_prune(None)


def test_per_view_methods_need_strip_unpad_on_a_spatial_unpad_checkpoint(loaded):
    _, model, _, _ = loaded["llava"]
    for name in ("cdpruner", "vispruner", "visionzip"):
        with pytest.raises(ValueError, match=rf"^--prune-method {name} on LLaVA-1\.6: its official code prunes each "
                                             r"view .*pass --prune-option strip_unpad=true to run it that way$"):
            model.set_prune(PruneConfig(method=name, keep=9))
    for name in sorted(REFUSED):
        cfg = PruneConfig(method=name, layer=0, keep=9) if name == "random" else PruneConfig(
            method=name, keep=9, options={"adaptive": False})
        with pytest.raises(ValueError, match=rf"^--prune-method '{name}' at the vision stage is not supported for "
                                             r"LLaVA-1\.6 \(anyres\) checkpoints: its official code has no LLaVA-NeXT"):
            model.set_prune(cfg)
    with pytest.raises(ValueError, match=r"^--prune-keep-newlines is for language-model methods"):
        model.set_prune(PruneConfig(method="divprune", ratio=0.25, keep_newlines=True))
    # the per-view budget is checked against a view's 36 patches
    with pytest.raises(ValueError, match=r"^--prune-keep 37 keeps 37 of 36 visual tokens"):
        model.set_prune(PruneConfig(method="cdpruner", keep=37, options={"strip_unpad": True}))
    model.set_prune(None)


# -- VisPruner -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float64(ckpts):
    """The tiny LLaVA-1.6 and transformers' eager CLIP tower in float64 (VisPruner's diverse rounds order
    near-equal similarities; see tests/test_vispruner.py)."""
    from transformers import CLIPVisionModel

    tok, model, proc, _ = load_pretrained_model(ckpts["llava"], device="cpu", torch_dtype=torch.float64)
    tower = CLIPVisionModel.from_pretrained(os.path.join(ckpts["llava"], NEXT_TOWER_DIR), attn_implementation="eager",
                                            dtype=torch.float64).eval()
    return tok, model, proc, tower


def test_vispruner_keeps_the_official_tokens_of_every_view_in_the_spatial_order(float64):
    tok, model, proc, tower = float64
    n, ratio = NEXT_VISION_CONFIGS["vispruner"]["keep"], 0.5
    model.set_prune(PruneConfig(method="vispruner", **NEXT_VISION_CONFIGS["vispruner"]))
    try:
        ids, batch, mask, px, sizes = _batch(tok, model, proc)
        px = [p.double() for p in px] if isinstance(px, list) else px.double()
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
            trace = model.get_model().prune_trace
            for row, size in enumerate(sizes):
                out = tower(px[row], output_hidden_states=True, output_attentions=True)
                attention = out.attentions[-2][:, :, 0, 1:].mean(dim=1).numpy()
                features = out.hidden_states[-2][:, 1:].numpy()
                kept = [official_kept(attention[v], features[v], n, ratio) for v in range(px[row].shape[0])]
                (rec,) = trace[row][0]
                order = _spatial_order(kept, _crop_grid(size, "llava"))
                assert rec.kept.tolist() == order and len(order) == px[row].shape[0] * n
                projected = model.get_model().mm_projector(out.hidden_states[-2][:, 1:])
                projected = projected.reshape(-1, projected.shape[-1])
                torch.testing.assert_close(_span(model, batch, mask, px, sizes, row), projected[order], atol=1e-5,
                                           rtol=1e-4)
    finally:
        model.set_prune(None)


# -- VisionZip -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["llava", "hf"])
def test_visionzip_keeps_and_lays_out_the_official_tokens_of_every_view(loaded, ckpts, fmt):
    from transformers import CLIPVisionModel

    tok, model, proc, _ = loaded[fmt]
    opts = NEXT_VISION_CONFIGS["visionzip"]["options"]
    d, c = opts["dominant"], opts["contextual"]
    # both formats hold the same tiny CLIP (the hf one is checked against the llava one's by load_clip_text)
    tower = CLIPVisionModel.from_pretrained(os.path.join(ckpts["llava"], NEXT_TOWER_DIR), attn_implementation="eager")
    model.set_prune(_config("visionzip", fmt, ckpts))
    try:
        ids, batch, mask, px, sizes = _batch(tok, model, proc)
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
            trace = model.get_model().prune_trace
            projector = model.get_model().mm_projector
            for row, size in enumerate(sizes):
                views = px[row]
                cls_rows, keys, feats, _ = transformers_quantities(tower, views)
                refs = [official_visionzip(cls_rows[v], keys[v], feats[v], d, c) for v in range(views.shape[0])]
                dom = [r[0] for r in refs]
                out_rows = [r[1] for r in refs]  # per view: CLS, the dominant patches (ascending), contextual
                order = _spatial_order(dom, _crop_grid(size, fmt))
                crops = range(1, views.shape[0])
                tokens = [out_rows[0]]  # the base view as VisionZip outputs it
                tokens += [out_rows[p // PER_VIEW][1 + dom[p // PER_VIEW].index(p % PER_VIEW)][None]
                           for p in order[d - 1:]]  # the crops' dominant patches on the crop grid
                tokens += [out_rows[k][:1] for k in crops] + [out_rows[k][d:] for k in crops]
                (rec,) = trace[row][0]
                assert rec.kept.tolist() == order and rec.merged == views.shape[0] * (1 + c)
                expected = projector(torch.tensor(np.concatenate(tokens), dtype=torch.float32))
                assert expected.shape[0] == views.shape[0] * (d + c)
                torch.testing.assert_close(_span(model, batch, mask, px, sizes, row), expected, atol=1e-5, rtol=1e-4)
    finally:
        model.set_prune(None)


def test_a_flat_merge_checkpoint_concatenates_the_views_as_the_official_flat_branches(loaded, ckpts):
    """mm_patch_merge_type flat: CDPruner's official flat branch keeps each view's kept patches, views in turn;
    VisionZip's concatenates every view's CLS, dominant and contextual tokens."""
    tok, model, proc, _ = loaded["llava"]
    ids, batch, mask, px, sizes = _batch(tok, model, proc)
    model.config.mm_patch_merge_type = "flat"
    try:
        model.set_prune(PruneConfig(method="cdpruner", keep=5))  # no unpad to strip: no option needed
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes, texts=QUESTIONS)
        for row, stages in enumerate(model.get_model().prune_trace):
            kept = stages[0][0].kept.tolist()
            assert len(kept) == 5 * px[row].shape[0] and kept == sorted(kept)  # view-major, ascending
        model.set_prune(PruneConfig(method="visionzip", keep=9, options={"dominant": 6, "contextual": 3}))
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
            spans = [_span(model, batch, mask, px, sizes, row) for row in range(len(sizes))]
        trace = model.get_model().prune_trace
        from transformers import CLIPVisionModel

        tower = CLIPVisionModel.from_pretrained(os.path.join(ckpts["llava"], NEXT_TOWER_DIR),
                                                attn_implementation="eager")
        for row in range(len(sizes)):
            cls_rows, keys, feats, _ = transformers_quantities(tower, px[row])
            refs = [official_visionzip(cls_rows[v], keys[v], feats[v], 6, 3) for v in range(px[row].shape[0])]
            assert trace[row][0][0].kept.tolist() == [v * PER_VIEW + p for v, (dom, _) in enumerate(refs)
                                                        for p in dom]
            with torch.no_grad():
                expected = model.get_model().mm_projector(torch.tensor(np.concatenate([r[1] for r in refs]),
                                                                       dtype=torch.float32))
            torch.testing.assert_close(spans[row], expected, atol=1e-5, rtol=1e-4)
        model.config.mm_patch_merge_type = "spatial"  # VisionZip's spatial branch fails in the official code
        with pytest.raises(ValueError, match=r"^--prune-method visionzip on LLaVA-1\.6 with mm_patch_merge_type "
                                             r"spatial: the official code has no working path"):
            model.set_prune(PruneConfig(method="visionzip", keep=9))
    finally:
        model.config.mm_patch_merge_type = "spatial_unpad"
        model.set_prune(None)


# -- DivPrune ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["llava", "hf"])
def test_divprune_picks_the_official_tokens_of_the_merged_sequence(loaded, ckpts, fmt):
    """The official LLaVA-1.6 path prunes the image's features after the model's merge (unpad, newlines): the
    reference is transformers' LlavaNext packed features, in each format's pinpoint reading."""
    from transformers import LlavaNextConfig, LlavaNextModel

    tok, model, proc, _ = loaded[fmt]
    config = LlavaNextConfig.from_pretrained(ckpts["hf"])
    if fmt == "llava":
        config.image_grid_pinpoints = [p[::-1] for p in config.image_grid_pinpoints]
    ref = LlavaNextModel.from_pretrained(ckpts["hf"], config=config, dtype=torch.float32).eval()
    ratio = NEXT_VISION_CONFIGS["divprune"]["ratio"]
    model.set_prune(PruneConfig(method="divprune", ratio=ratio))
    try:
        ids, batch, mask, px, sizes = _batch(tok, model, proc)
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
            trace = model.get_model().prune_trace
            for row, size in enumerate(sizes):
                views = px[row]
                packed = ref.get_image_features(views[None], torch.tensor([[size[1], size[0]]]))
                packed = getattr(packed, "pooler_output", packed)[0]
                v = packed.shape[0]
                n = int(round(ratio * v))  # the official count: Python's round of the float product
                picks, _ = official_picks(packed.double().numpy(), n)
                (rec,) = trace[row][0]
                assert rec.length == v and rec.kept.tolist() == sorted(picks)
                torch.testing.assert_close(_span(model, batch, mask, px, sizes, row), packed[sorted(picks)])
    finally:
        model.set_prune(None)


def test_divprune_counts_follow_the_official_rounding_of_each_images_v(loaded):
    tok, model, proc, _ = loaded["llava"]
    ids, batch, mask, px, sizes = _batch(tok, model, proc, sizes=[(300, 20), (64, 64), (20, 300)])
    try:
        # V = 74 / 78 / 90; 0.25 V = 18.5 / 19.5 / 22.5, which Python's round takes to the even 18 / 20 / 22
        model.set_prune(PruneConfig(method="divprune", ratio=0.25))
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
        assert [(r[0][0].length, len(r[0][0].kept)) for r in model.get_model().prune_trace] == [
            (74, 18), (78, 20), (90, 22)]
        # a keep above an image's V keeps it whole (capped): 80 of 74 / 78, 80 of 90
        model.set_prune(PruneConfig(method="divprune", keep=80))
        with torch.no_grad():
            model(batch, attention_mask=mask, images=px, image_sizes=sizes)
        assert [(len(r[0][0].kept), r[0][0].capped) for r in model.get_model().prune_trace] == [
            (74, True), (78, True), (80, False)]
    finally:
        model.set_prune(None)


# -- every configured method: mixed shapes in one batch equal each row alone; counts per image ------------------

def test_every_vision_method_is_configured_or_refused():
    from entropyprune.methods import METHODS

    vision = {n for n, spec in METHODS.items() if "vision" in spec.stages}
    assert vision == set(NEXT_VISION_CONFIGS) | REFUSED
    assert all(METHODS[n].anyres is None for n in REFUSED)


@pytest.mark.parametrize("name", sorted(NEXT_VISION_CONFIGS))
def test_mixed_shapes_in_one_batch_equal_each_row_alone(loaded, ckpts, name):
    tok, model, proc, _ = loaded["llava"]
    model.set_prune(_config(name, "llava", ckpts))
    try:
        ids, batch, mask, px, sizes = _batch(tok, model, proc)
        with torch.no_grad():
            together = model.generate(batch, images=px, image_sizes=sizes, attention_mask=mask, max_new_tokens=3,
                                      texts=QUESTIONS)
            trace = [[rec.kept.tolist() for rec in row[0]] for row in model.get_model().prune_trace]
            counts = [len(row[0][0].kept) + row[0][0].merged for row in model.get_model().prune_trace]
            for b in range(len(ids)):
                alone = model.generate(ids[b][None], images=[px[b]], image_sizes=[sizes[b]], max_new_tokens=3,
                                       texts=[QUESTIONS[b]])
                assert together[b, : alone.shape[1]].tolist() == alone[0].tolist(), (name, b)
                assert [rec.kept.tolist() for rec in model.get_model().prune_trace[0][0]] == trace[b], (name, b)
    finally:
        model.set_prune(None)
    # 300x20 and 20x300: 1 + 3 views; 64x64 in LLaVA's reading: 1 + 2 views (V = 74 / 90 / 78 merged)
    views = [4, 4, 3]
    per_view = {"cdpruner": 6, "vispruner": 8, "visionzip": 9}
    expected = [v * per_view[name] for v in views] if name in per_view else [18, 22, 20]
    assert counts == expected
