"""A checkpoint missing a piece, a corrupt file, a bad config or an unusable device: one error naming it."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.tools.make_tiny_checkpoint import TOWER_DIR

TOWER_WEIGHTS = os.path.join(TOWER_DIR, "model.safetensors")
SHARD = "model-00001-of-00002.safetensors"


def _copy(src, tmp_path):
    return str(shutil.copytree(src, tmp_path / "m"))


def _remove(path, *names):
    for name in names:
        target = os.path.join(path, name)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)


# (checkpoint, files removed, exception, what the message must name)
MISSING = [
    ("llava", ["tokenizer.model"], FileNotFoundError, r"no tokenizer in .*tokenizer\.model .*tokenizer\.json"),
    ("hf", ["tokenizer.model", "tokenizer.json"], FileNotFoundError, r"no tokenizer in .*tokenizer\.model"),
    ("llava", ["config.json"], FileNotFoundError, r"no config\.json in model folder"),
    ("llava", [SHARD, "model-00002-of-00002.safetensors", "model.safetensors.index.json"], FileNotFoundError,
     r"no weights in .*model\.safetensors"),
    ("hf", ["model-00002-of-00002.safetensors"], FileNotFoundError, r"model-00002-of-00002\.safetensors"),
    ("llava", [TOWER_DIR], FileNotFoundError, rf"vision tower '{TOWER_DIR}'"),
    ("llava", [TOWER_WEIGHTS], FileNotFoundError, rf"no weights in .*{TOWER_DIR}.*model\.safetensors"),
    ("llava", [os.path.join(TOWER_DIR, "config.json")], FileNotFoundError, rf"{TOWER_DIR}' has no config\.json"),
    ("llava", [os.path.join(TOWER_DIR, "preprocessor_config.json")], FileNotFoundError,
     rf"{TOWER_DIR}' has no preprocessor_config\.json"),
    ("hf", ["preprocessor_config.json"], FileNotFoundError, r"preprocessor_config\.json is missing"),
]


@pytest.mark.parametrize("fmt,names,exc,message", MISSING, ids=[f"{m[0]}-{m[1][0]}" for m in MISSING])
def test_missing_piece_is_named(tmp_path, tiny_llava, tiny_hf, fmt, names, exc, message):
    path = _copy(tiny_llava if fmt == "llava" else tiny_hf, tmp_path)
    _remove(path, *names)
    with pytest.raises(exc, match=message):
        load_pretrained_model(path, device="cpu")


def _drop_tensors(path, prefix):
    """Remove the tensors whose names start with `prefix` from every shard (index updated)."""
    from safetensors.torch import load_file, save_file

    index_file = os.path.join(path, "model.safetensors.index.json")
    index = json.load(open(index_file))
    dropped = [k for k in index["weight_map"] if k.startswith(prefix)]
    for shard in set(index["weight_map"].values()):
        state = load_file(os.path.join(path, shard))
        save_file({k: t for k, t in state.items() if not k.startswith(prefix)}, os.path.join(path, shard))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith(prefix)}
    json.dump(index, open(index_file, "w"))
    return dropped


@pytest.mark.parametrize("fmt,prefix,named", [
    ("llava", "model.mm_projector.", "model.mm_projector.0.bias"),
    ("hf", "model.multi_modal_projector.", "model.mm_projector.0.bias"),
    ("hf", "model.vision_tower.", "model.vision_tower.vision_tower.embeddings.class_embedding"),
])
def test_missing_projector_or_tower_tensors(tmp_path, tiny_llava, tiny_hf, fmt, prefix, named):
    path = _copy(tiny_llava if fmt == "llava" else tiny_hf, tmp_path)
    dropped = _drop_tensors(path, prefix)
    assert dropped
    with pytest.raises(ValueError, match=rf"{len(dropped)} parameter\(s\) the config needs are not in the "
                                         rf"weights: .*{named}"):
        load_pretrained_model(path, device="cpu")


def test_tokenizer_larger_than_the_embedding(tmp_path, tiny_llava):
    path = _copy(tiny_llava, tmp_path)
    cfg = json.load(open(os.path.join(path, "config.json")))
    vocab = cfg["vocab_size"]
    from safetensors.torch import load_file, save_file

    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        shard = os.path.join(path, index["weight_map"][key])
        state = load_file(shard)
        state[key] = state[key][: vocab - 10].contiguous()
        save_file(state, shard)
    cfg["vocab_size"] = vocab - 10
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    with pytest.raises(ValueError, match=rf"tokenizer .* has {vocab} tokens but the model's vocab_size is "
                                         rf"{vocab - 10}"):
        load_pretrained_model(path, device="cpu")


# -- corrupt files --------------------------------------------------------------------------------------------

def _truncate(file):
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) // 2])


def _garbage(file):
    open(file, "wb").write(b"\x89garbage, not weights" * 50)


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
@pytest.mark.parametrize("fmt", ["llava", "hf"])
def test_corrupt_safetensors_shard(tmp_path, tiny_llava, tiny_hf, damage, fmt):
    path = _copy(tiny_llava if fmt == "llava" else tiny_hf, tmp_path)
    damage(os.path.join(path, SHARD))
    with pytest.raises(ValueError, match=rf"cannot read weights file .*{SHARD}"):
        load_pretrained_model(path, device="cpu")


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_corrupt_bin_shard(tmp_path, damage):
    from llava.tools.make_tiny_checkpoint import build

    path = build(str(tmp_path / "bin"), "hf", seed=0, weights="bin")
    damage(os.path.join(path, "pytorch_model-00001-of-00002.bin"))
    with pytest.raises(ValueError, match=r"cannot read weights file .*pytorch_model-00001-of-00002\.bin"):
        load_pretrained_model(path, device="cpu")


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_corrupt_tower_weights(tmp_path, tiny_llava, damage):
    path = _copy(tiny_llava, tmp_path)
    damage(os.path.join(path, TOWER_WEIGHTS))
    with pytest.raises(ValueError, match=rf"cannot load the vision tower .*{TOWER_DIR}"):
        load_pretrained_model(path, device="cpu")


BAD_JSON = [
    ("llava", "config.json", "{not json", r"config\.json is not valid JSON"),
    ("llava", "config.json", "[1, 2]", r"config\.json must hold a JSON object"),
    ("llava", "config.json", None, r"config\.json: .*num_attention_heads"),
    ("hf", "config.json", "", r"config\.json is not valid JSON"),
    ("llava", "model.safetensors.index.json", "{\"weight_map\": ", r"model\.safetensors\.index\.json is not valid"),
    ("llava", "model.safetensors.index.json", "{}", r"model\.safetensors\.index\.json has no 'weight_map'"),
    ("llava", "tokenizer_config.json", "{{", r"tokenizer_config\.json is not valid JSON"),
    ("llava", os.path.join(TOWER_DIR, "config.json"), "{", rf"{TOWER_DIR}/config\.json is not valid JSON"),
    ("llava", os.path.join(TOWER_DIR, "preprocessor_config.json"), "nope",
     r"preprocessor_config\.json is not valid JSON"),
    ("hf", "preprocessor_config.json", "{", r"preprocessor_config\.json is not valid JSON"),
]


@pytest.mark.parametrize("fmt,name,text,message", BAD_JSON, ids=[f"{b[0]}-{b[1]}-{i}" for i, b in enumerate(BAD_JSON)])
def test_invalid_json_names_the_file(tmp_path, tiny_llava, tiny_hf, fmt, name, text, message):
    path = _copy(tiny_llava if fmt == "llava" else tiny_hf, tmp_path)
    file = os.path.join(path, name)
    if text is None:  # valid JSON, impossible value
        cfg = json.load(open(file))
        cfg["num_attention_heads"] = "many"
        text = json.dumps(cfg)
    open(file, "w").write(text)
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(path, device="cpu")


# -- devices --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(tiny_llava):
    with pytest.raises(ValueError, match=r"--device 'cuda': (this torch build has no CUDA|no CUDA GPU).*cpu"):
        load_pretrained_model(tiny_llava, device="cuda")


def test_cuda_index_beyond_the_visible_gpus(tiny_llava):
    with pytest.raises(ValueError, match=r"--device 'cuda:99'"):
        load_pretrained_model(tiny_llava, device="cuda:99")


def test_not_a_device(tiny_llava):
    with pytest.raises(ValueError, match=r"--device 'banana' is not a device"):
        load_pretrained_model(tiny_llava, device="banana")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_device_cuda_on_cpu_build(tmp_path, tiny_llava):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "llava.eval.run_llava", "--model-path", tiny_llava, "--image-file", str(image),
         "--query", "q", "--device", "cuda"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --device 'cuda'")


def test_a_language_model_other_than_llama_or_mistral_is_refused_by_name(tmp_path, tiny_hf):
    path = _copy(tiny_hf, tmp_path)
    config_file = os.path.join(path, "config.json")
    config = json.load(open(config_file))
    config["text_config"]["model_type"] = "qwen2"
    json.dump(config, open(config_file, "w"))
    with pytest.raises(NotImplementedError, match=r"config\.json: model_type 'llava' with a 'qwen2' language model"):
        load_pretrained_model(path, device="cpu")
