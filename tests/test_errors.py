"""Bad input: each gets one clear error that names the thing at fault."""

import json
import os
import shutil

import pytest

from llava.mm_utils import load_image
from llava.model.builder import load_pretrained_model


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found: .*nowhere"):
        load_pretrained_model(str(tmp_path / "nowhere"), device="cpu")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_config_without_vision_tower(tmp_path, tiny_llava):
    path = _copy(tiny_llava, tmp_path / "m")
    cfg_file = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_file))
    del cfg["mm_vision_tower"]
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(ValueError, match="has no 'mm_vision_tower'"):
        load_pretrained_model(path, device="cpu")


def test_missing_vision_tower_folder(tmp_path, tiny_llava):
    path = _copy(tiny_llava, tmp_path / "m")
    shutil.rmtree(os.path.join(path, "clip-vit-tiny-patch14-336"))
    with pytest.raises(FileNotFoundError, match="vision tower 'clip-vit-tiny-patch14-336'.*--vision-tower"):
        load_pretrained_model(path, device="cpu")


def test_vision_tower_override(tmp_path, tiny_llava):
    path = _copy(tiny_llava, tmp_path / "m")
    moved = tmp_path / "tower"
    shutil.move(os.path.join(path, "clip-vit-tiny-patch14-336"), moved)
    _, model, proc, _ = load_pretrained_model(path, device="cpu", vision_tower=str(moved))
    assert model.get_vision_tower().num_patches == 576 and proc is not None


def test_missing_weights(tmp_path, tiny_llava):
    path = _copy(tiny_llava, tmp_path / "m")
    os.remove(os.path.join(path, "model-00002-of-00002.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_pretrained_model(path, device="cpu")


def test_unreadable_image(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        load_image(str(bad))
    with pytest.raises(FileNotFoundError, match="image file not found: .*absent.png"):
        load_image(str(tmp_path / "absent.png"))


def test_image_count_mismatch(loaded_tiny):
    import torch

    tok, model, _, _ = loaded_tiny
    ids = torch.tensor([[1, 5, -200, 6, -200, 7]])
    with pytest.raises(ValueError, match="2 <image> marker.*1 image"):
        model(ids, images=torch.zeros(1, 3, 336, 336))
    with pytest.raises(ValueError, match="no images were given"):
        model(ids)


def test_quantised_loading_refused(tiny_llava):
    with pytest.raises(NotImplementedError, match="8-bit and 4-bit"):
        load_pretrained_model(tiny_llava, load_4bit=True, device="cpu")


def test_offline_hub_id_not_in_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="model folder not found: 'someone/llava-missing'.*offline"):
        load_pretrained_model("someone/llava-missing", device="cpu")


def test_offline_hub_id_found_in_cache(tmp_path, monkeypatch, tiny_llava):
    """A hub id resolves to the hub cache when offline (the layout huggingface_hub writes)."""
    cache = tmp_path / "hub"
    repo = cache / "models--someone--llava-tiny"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llava, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read when the hub is imported
    _, model, _, _ = load_pretrained_model("someone/llava-tiny", device="cpu")
    assert model.config.num_hidden_layers == 4
