"""Every key layout transformers' LlavaForConditionalGeneration reads loads here to the same model, checked
against transformers itself on the same weights; a checkpoint that does not fit its config is an error."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from tests.conftest import make_image, vicuna_prompt


def _state(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def _rename(key, pairs):
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


# The tiny hf checkpoint is written in transformers >= 4.52's layout; each entry rewrites its keys.
_OLD = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))
LAYOUTS = {
    # save_pretrained since transformers 4.52
    "new": lambda k: k,
    # llava-hf/llava-1.5-7b-hf as the hub ships it
    "llava-hf": lambda k: _rename(k, _OLD),
    # the CLIP tower without CLIPVisionModel's vision_model level, as transformers 5 saves a bare CLIPVisionModel
    "new-flat-tower": lambda k: k.replace("vision_tower.vision_model.", "vision_tower."),
    "llava-hf-flat-tower": lambda k: _rename(k, _OLD).replace("vision_tower.vision_model.", "vision_tower."),
    # a saved LlavaModel's names (language_model.* without .model) plus the head
    "llavamodel": lambda k: k[len("model."):] if k.startswith("model.") else k,
    "new-nested-lm": lambda k: k.replace("model.language_model.", "model.language_model.model."),
}


def _write(folder, src, state, shards=1):
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    keys = list(state)
    if shards == 1:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return str(folder)
    per = -(-len(keys) // shards)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[s * per:(s + 1) * per]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return str(folder)


def _logits_both(path):
    """Our logits and transformers' on the same prompt and image, and where the text positions are."""
    from transformers import LlavaForConditionalGeneration

    ref, info = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # a layout transformers reads without loss
    tok, ours, proc, _ = load_pretrained_model(path, device="cpu")
    ids = tokenizer_image_token(vicuna_prompt("What is in the picture?"), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=1)], proc, ours.config)
    image_id = ref.config.image_token_index
    hf_ids = []
    for t in ids[0].tolist():
        hf_ids += [image_id] * 576 if t == IMAGE_TOKEN_INDEX else [t]
    hf_ids = torch.tensor([hf_ids])
    with torch.no_grad():
        a = ours(ids, images=pixels).logits
        b = ref.eval()(input_ids=hf_ids, pixel_values=pixels).logits
    return a, b, hf_ids[0] != image_id


@pytest.fixture(scope="module")
def hf_state(tiny_hf):
    return _state(tiny_hf)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_transformers(tmp_path, tiny_hf, hf_state, layout):
    state = {LAYOUTS[layout](k): t for k, t in hf_state.items()}
    assert len(state) == len(hf_state)
    path = _write(tmp_path / layout, tiny_hf, state, shards=2 if layout == "llava-hf" else 1)
    a, b, text = _logits_both(path)
    assert a.shape == b.shape
    assert (a[0, text] - b[0, text]).abs().max() <= 1e-4
    assert (a - b).abs().max() <= 1e-3


def test_known_buffers_are_ignored(tmp_path, tiny_hf, hf_state):
    """RoPE inv_freq and CLIP position_ids, which older transformers saved, are dropped by name."""
    state = {LAYOUTS["llava-hf"](k): t for k, t in hf_state.items()}
    state["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    state["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(577)[None]
    path = _write(tmp_path / "buffers", tiny_hf, state)
    _, ours, _, _ = load_pretrained_model(path, device="cpu")
    _, ref, _, _ = load_pretrained_model(tiny_hf, device="cpu")
    sa, sb = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


def test_tied_head_without_lm_head(tmp_path, tiny_hf, hf_state):
    """tie_word_embeddings and no head in the weights: the head is the embedding, as in transformers."""
    state = {k: t for k, t in hf_state.items() if k != "lm_head.weight"}
    path = _write(tmp_path / "tied", tiny_hf, state)
    cfg_file = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = True
    json.dump(cfg, open(cfg_file, "w"))
    a, b, text = _logits_both(path)
    assert (a[0, text] - b[0, text]).abs().max() <= 1e-4


@pytest.mark.parametrize("layout", ["new", "llava-hf"])
def test_removed_tensor_is_named(tmp_path, tiny_hf, hf_state, layout):
    state = {LAYOUTS[layout](k): t for k, t in hf_state.items()}
    gone = [k for k in state if k.endswith("multi_modal_projector.linear_2.bias")]
    assert len(gone) == 1
    del state[gone[0]]
    path = _write(tmp_path / "m", tiny_hf, state)
    with pytest.raises(ValueError, match=r"1 parameter\(s\) the config needs are not in the weights: "
                                         r"model\.mm_projector\.2\.bias") as err:
        load_pretrained_model(path, device="cpu")
    assert "match no parameter" not in str(err.value)


@pytest.mark.parametrize("layout", ["new", "llava-hf"])
def test_unknown_tensor_is_named(tmp_path, tiny_hf, hf_state, layout):
    state = {LAYOUTS[layout](k): t for k, t in hf_state.items()}
    state["language_model.model.layers.0.mlp.adapter.weight"] = torch.zeros(4, 4)
    path = _write(tmp_path / "m", tiny_hf, state)
    with pytest.raises(ValueError, match=r"1 checkpoint tensor\(s\) match no parameter: "
                                         r"language_model\.model\.layers\.0\.mlp\.adapter\.weight"):
        load_pretrained_model(path, device="cpu")


def test_many_missing_and_unused_are_counted(tmp_path, tiny_hf, hf_state):
    """A checkpoint of another model: counts and a few names of each, not silently random weights."""
    state = {("other." + k if ".layers." in k else k): t for k, t in hf_state.items()}
    n_layers = sum(".layers." in k for k in hf_state)
    path = _write(tmp_path / "m", tiny_hf, state)
    with pytest.raises(ValueError) as err:
        load_pretrained_model(path, device="cpu")
    msg = str(err.value)
    assert f"{n_layers} parameter(s) the config needs are not in the weights" in msg
    assert f"{n_layers} checkpoint tensor(s) match no parameter: other." in msg
    assert f"({n_layers - 5} more)" in msg and path in msg


def test_two_keys_for_one_parameter(tmp_path, tiny_hf, hf_state):
    state = dict(hf_state)
    state["language_model.lm_head.weight"] = state["lm_head.weight"].clone()
    path = _write(tmp_path / "m", tiny_hf, state)
    with pytest.raises(ValueError, match="both give parameter lm_head.weight"):
        load_pretrained_model(path, device="cpu")


@pytest.mark.parametrize("key", ["image_newline", "model.image_newline"])
def test_llava_next_weight_in_a_llava_1_5_config_is_unused(tmp_path, tiny_hf, hf_state, key):
    """A LLaVA-1.5 config (model_type llava: no spatial_unpad merge) has no image_newline to load it into."""
    state = {**hf_state, key: torch.zeros(64)}
    path = _write(tmp_path / "m", tiny_hf, state)
    with pytest.raises(ValueError, match=rf"1 checkpoint tensor\(s\) match no parameter: {key}\."):
        load_pretrained_model(path, device="cpu")


def test_llava_next_config_needs_image_newline(tmp_path, tiny_hf):
    path = shutil.copytree(tiny_hf, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "llava_next"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"1 parameter\(s\) the config needs are not in the weights: "
                                         r"model\.image_newline"):
        load_pretrained_model(str(path), device="cpu")


# -- LLaVA's own format --------------------------------------------------------------------------------------

def _llava_copy(tmp_path, tiny_llava, edit):
    path = shutil.copytree(tiny_llava, tmp_path / "m")
    state = _state(path)
    edit(state)
    for f in os.listdir(path):
        if f.endswith((".safetensors", ".index.json")):
            os.remove(path / f)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_llava_format_removed_and_unknown_tensors(tmp_path, tiny_llava):
    def edit(state):
        del state["model.norm.weight"]
        state["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)

    path = _llava_copy(tmp_path, tiny_llava, edit)
    with pytest.raises(ValueError, match=r"1 parameter.*: model\.norm\.weight; 1 checkpoint tensor.*: "
                                         r"model\.layers\.9\.mlp\.up_proj\.weight"):
        load_pretrained_model(str(path), device="cpu")


def test_llava_format_tower_keys_follow_unfreeze_mm_vision_tower(tmp_path, tiny_llava):
    """As in LLaVA: tower tensors in the checkpoint are used only when it was trained with the tower unfrozen
    (`unfreeze_mm_vision_tower`); otherwise the tower comes from `mm_vision_tower`."""
    from llava.tools.make_tiny_checkpoint import TOWER_DIR

    # the tower folder is a full CLIPModel; a LLaVA checkpoint holds only its vision half (CLIPVisionModel's keys)
    tower = {k: t for k, t in load_file(os.path.join(tiny_llava, TOWER_DIR, "model.safetensors")).items()
             if k.startswith("vision_model.")}
    tuned = {"model.vision_tower.vision_tower." + k: t * 2 for k, t in tower.items()}
    path = _llava_copy(tmp_path, tiny_llava, lambda state: state.update(tuned))
    key = "post_layernorm.weight"
    _, frozen, _, _ = load_pretrained_model(str(path), device="cpu")
    assert torch.equal(frozen.get_vision_tower().vision_tower.state_dict()[key], tower["vision_model." + key])
    cfg = json.loads((path / "config.json").read_text())
    cfg["unfreeze_mm_vision_tower"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    _, unfrozen, _, _ = load_pretrained_model(str(path), device="cpu")
    got = unfrozen.get_vision_tower().vision_tower.state_dict()
    assert all(torch.equal(got[k[len("vision_model."):]], t * 2) for k, t in tower.items())


def test_tower_with_a_missing_tensor(tmp_path, tiny_llava):
    from llava.tools.make_tiny_checkpoint import TOWER_DIR

    path = shutil.copytree(tiny_llava, tmp_path / "m")
    file = str(path / TOWER_DIR / "model.safetensors")
    state = load_file(file)
    del state["vision_model.encoder.layers.1.mlp.fc2.weight"]
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 2)  # a full CLIPModel's: harmless
    state["vision_model.encoder.layers.1.mlp.fc3.weight"] = torch.zeros(3, 2)
    save_file(state, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"vision tower '.*{TOWER_DIR}'.*1 weight\(s\) missing.*layers\.1\.mlp\."
                                         r"fc2\.weight; 1 tensor\(s\) matching no weight: .*fc3") as err:
        load_pretrained_model(str(path), device="cpu")
    assert "text_model" not in str(err.value)
