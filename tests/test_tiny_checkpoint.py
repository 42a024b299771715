"""The tiny checkpoints are readable by official LLaVA's transformers (4.37) as well as here, and deterministic."""

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llava.model.builder import load_pretrained_model
from llava.tools.make_tiny_checkpoint import TOWER_DIR, build


def _keys(path):
    with safe_open(path, "pt") as f:
        return list(f.keys())


def test_tower_is_saved_in_clip_vision_model_layout(tiny_llava, loaded_tiny):
    """A full CLIPModel checkpoint as openai/clip-vit-large-patch14-336 is: the vision tower under its
    `vision_model.*` names (which transformers 4.x needs; without them it initialises the tower at random, and
    transformers 5 reads them too), next to the text tower and the two projections."""
    from transformers import CLIPModel, CLIPVisionModel

    tower_dir = os.path.join(tiny_llava, TOWER_DIR)
    keys = _keys(os.path.join(tower_dir, "model.safetensors"))
    other = {k for k in keys if not k.startswith(("vision_model.", "text_model."))}
    assert any(k.startswith("vision_model.") for k in keys) and any(k.startswith("text_model.") for k in keys)
    assert other == {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    _, info = CLIPModel.from_pretrained(tower_dir, output_loading_info=True)
    assert not any(info.values()), info
    ref, info = CLIPVisionModel.from_pretrained(tower_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert all(not k.startswith("vision_model.") for k in info["unexpected_keys"])  # only the text half is unused
    ours = loaded_tiny[1].get_vision_tower()
    assert ref.state_dict().keys() == ours.vision_tower.state_dict().keys()
    assert all(torch.equal(t, ours.vision_tower.state_dict()[k]) for k, t in ref.state_dict().items())
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref.eval()(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.allclose(ours(pixels), expected, atol=1e-6)


def test_hf_format_tower_keys_and_the_unprefixed_layout(tmp_path, tiny_hf):
    """hf-format weights name the tower `model.vision_tower.vision_model.*` as llava-hf's checkpoints do; weights
    without the `vision_model.` level (tiny checkpoints from before) still load to the same model."""
    shards = [os.path.join(tiny_hf, f) for f in sorted(os.listdir(tiny_hf)) if f.endswith(".safetensors")]
    tower_keys = [k for s in shards for k in _keys(s) if "vision_tower" in k]
    assert tower_keys and all(k.startswith("model.vision_tower.vision_model.") for k in tower_keys)

    flat = shutil.copytree(tiny_hf, tmp_path / "flat")
    for shard in shards:
        state = load_file(shard)
        state = {k.replace("model.vision_tower.vision_model.", "model.vision_tower."): t for k, t in state.items()}
        save_file(state, str(flat / os.path.basename(shard)), metadata={"format": "pt"})
    index_file = flat / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"] = {k.replace(".vision_model.", "."): v for k, v in index["weight_map"].items()}
    index_file.write_text(json.dumps(index))
    _, a, _, _ = load_pretrained_model(tiny_hf, device="cpu")
    _, b, _, _ = load_pretrained_model(str(flat), device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _digests(folder) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("fmt", ["llava", "hf"])
def test_builds_are_byte_for_byte_identical(tmp_path, fmt, tiny_llava, tiny_hf):
    first = tiny_llava if fmt == "llava" else tiny_hf
    again = build(str(tmp_path / "elsewhere" / "another-name"), fmt, seed=0)
    digests = _digests(first)
    assert "tokenizer.model" in digests and len(digests) >= 9
    assert _digests(again) == digests


def test_tokenizer_model_stores_no_build_path(tiny_llava):
    from sentencepiece import sentencepiece_model_pb2 as pb

    with open(os.path.join(tiny_llava, "tokenizer.model"), "rb") as f:
        spec = pb.ModelProto.FromString(f.read()).trainer_spec
    assert list(spec.input) == [] and spec.model_prefix == ""


def test_tower_is_found_next_to_the_config(tmp_path, tiny_llava, monkeypatch):
    """A relative mm_vision_tower is the checkpoint's own folder, even when the working directory holds one
    of the same name (official LLaVA would take that one: see docs/Evaluation.md)."""
    decoy = tmp_path / "cwd" / TOWER_DIR
    decoy.mkdir(parents=True)
    (decoy / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "cwd")
    _, model, _, _ = load_pretrained_model(tiny_llava, device="cpu")
    assert model.config.mm_vision_tower == os.path.join(tiny_llava, TOWER_DIR)


def test_absolute_tower_path(tmp_path):
    out = build(str(tmp_path / "abs"), "llava", absolute_tower=True)
    with open(os.path.join(out, "config.json")) as f:
        tower = json.load(f)["mm_vision_tower"]
    assert os.path.isabs(tower) and os.path.samefile(tower, os.path.join(out, TOWER_DIR))


def test_the_text_half_leaves_the_vision_weights_as_their_own_seed_draws_them(loaded_tiny):
    """The tower is drawn first from seed + 1, the text half after from another seed: adding the text half
    changed no vision weight (so answers and kept tokens of earlier builds stay as they were)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from llava.tools.make_tiny_checkpoint import TINY_VISION

    torch.manual_seed(1)
    fresh = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).state_dict()
    ours = loaded_tiny[1].get_vision_tower().vision_tower.state_dict()
    assert fresh.keys() == ours.keys() and all(torch.equal(fresh[k], ours[k]) for k in fresh)


def test_training_init_sizes_and_legacy_tokenizer(tmp_path):
    """``--format llama --init train --hidden-size --layers --heads --tokenizer-legacy``: the Llama config has the
    sizes asked for; the weights are the documented draws (matrices N(0, 0.02), query/key N(0, 0.15), norms 1);
    the tokenizer says legacy, so LLaVA's v1 masks learn every answer of a multi-turn conversation."""
    from llava.model.builder import load_tokenizer
    from llava.tools.make_tiny_checkpoint import QK_INIT_STD
    from llava.train.data import preprocess_v1

    out = build(str(tmp_path / "m"), "llama", hidden_size=96, layers=3, heads=3, init="train",
                tokenizer_legacy=True, tower_kind="colour")
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"]) == (96, 192, 3, 3, 3)
    sd = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".safetensors"):
            sd.update(load_file(os.path.join(out, name)))
    assert not any(k.startswith("model.mm_projector.") for k in sd)
    qk = torch.cat([sd[f"model.layers.{i}.self_attn.{p}_proj.weight"].flatten() for i in range(3) for p in "qk"])
    rest = torch.cat([t.flatten() for k, t in sd.items() if t.dim() == 2 and not k.endswith(("q_proj.weight",
                                                                                             "k_proj.weight"))])
    assert abs(qk.std().item() - QK_INIT_STD) < 0.01 and abs(rest.std().item() - 0.02) < 0.001
    assert abs(qk.mean().item()) < 0.01 and abs(rest.mean().item()) < 0.001
    assert all(torch.equal(t, torch.ones_like(t)) for k, t in sd.items() if k.endswith("norm.weight"))
    tok = load_tokenizer(out)
    tok.pad_token = tok.unk_token
    assert tok.legacy is True
    turns = [("<image>\nIs there a red shape in the image?", "Yes"), ("Is there a blue shape in the image?", "No")]
    source = [m for q, a in turns for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    labels = preprocess_v1([source], tok, has_image=True)["labels"][0].tolist()
    assert tok.decode([t for t in labels if t != -100]).replace(" ", "") == "Yes</s>No</s>"


@pytest.mark.parametrize("kwargs, message", [
    (dict(init="train"), "--init train is a starting point for training"),
    (dict(fmt="llama", hidden_size=64, heads=3), "must split into --heads 3"),
    (dict(fmt="llama", layers=0), "--layers must be a positive integer"),
])
def test_training_init_refusals(tmp_path, kwargs, message):
    kwargs.setdefault("fmt", "llava")
    with pytest.raises(ValueError, match=message):
        build(str(tmp_path / "m"), **kwargs)
