"""Measured efficiency: FlopCounterMode against the analytic count, the KV cache against the kept tokens,
and the efficiency benchmark's output format."""

import json

import pytest
import torch

from entropyprune import flops as F
from entropyprune.config import PruneConfig
from llava.mm_utils import process_images, tokenizer_image_token
from llava.tools import flops_measured as M
from tests.conftest import make_image, vicuna_prompt

SEVEN_B = F.PRESETS["llava-1.5-7b"]


@pytest.mark.parametrize("keep", [None, 166, 98, 29])
def test_measured_matches_analytic_at_7b(keep):
    cmp = M.compare(SEVEN_B, n_text=62, keep=keep)
    assert cmp["max_rel_diff"] < 0.02
    for row in cmp["rows"]:
        assert row["measured"] > 0, row
    # The cache the real forward filled has the per-layer token counts the analytic count assumed.
    assert cmp["tokens_per_layer"] == cmp["analytic_tokens_per_layer"]
    assert cmp["fraction"] == pytest.approx(cmp["analytic_fraction"], rel=0.02)
    if keep is None:
        assert cmp["method_used"] is None and cmp["hook"] == 0
    else:
        # EntropyPrune itself runs on meta tensors; its Gram products are counted apart from the layers.
        assert cmp["method_used"] == "entropy"
        assert 0 < cmp["hook"] < 1e-3 * cmp["measured"]["prefill"]


def test_measured_covers_decode_lm_head_vision_and_gqa():
    gqa = F.LMShape(num_layers=4, hidden_size=256, intermediate_size=512, num_heads=8, num_kv_heads=2,
                    head_dim=32, vocab_size=1000)
    cmp = M.compare(gqa, n_text=20, n_visual=64, n_images=2, layer=1, keep=16, decode_steps=3, include_lm_head=True)
    assert cmp["max_rel_diff"] < 0.02
    assert cmp["measured"]["terms"]["k_proj"] == cmp["measured"]["terms"]["q_proj"] // 4
    parts = {r["part"] for r in cmp["rows"]}
    assert {"decode (3 steps)", "LM head"} <= parts
    vis = M.compare(SEVEN_B, n_text=62, keep=98, vision="clip-vit-l-14-336")
    row = next(r for r in vis["rows"] if r["part"].startswith("vision"))
    assert abs(row["rel_diff"]) < 0.02


def test_cli_flops_measured(capsys):
    from llava.cli import main

    assert main(["flops", "--avg-tokens", "128", "--text-tokens", "62", "--measured", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["measured"]["max_rel_diff"] < 0.02
    assert rep["measured"]["fraction"] == pytest.approx(rep["fraction"], rel=0.02)
    assert main(["flops", "--avg-tokens", "128", "--text-tokens", "62", "--measured"]) == 0
    out = capsys.readouterr().out
    assert "measured TFLOPs" in out and "FLOPs: 29.3%" in out


@pytest.mark.parametrize("avg", [None, 128])
def test_kv_cache_bytes_follow_kept_tokens(loaded_tiny, avg):
    tok, model, proc, _ = loaded_tiny
    ids = tokenizer_image_token(vicuna_prompt("What is it?"), tok, return_tensors="pt")[None]
    pixels = process_images([make_image()], proc, model.config)
    cfg = model.config
    L, K, V = cfg.num_hidden_layers, 2, 576
    n_text = ids.shape[1] - 1
    keep = None
    try:
        if avg is not None:
            # The 32-layer rule (the papers' budgets): a 4-layer model cannot average 128 with K=2 itself.
            keep = PruneConfig(layer=K, avg_tokens=avg).resolve(32, V)
            model.set_prune(PruneConfig(layer=K, keep=keep))
        with torch.inference_mode():
            out = model(ids, images=pixels, use_cache=True)
    finally:
        model.set_prune(None)
    cache = out.past_key_values
    lengths = cache.layer_lengths()
    kept = V if keep is None else keep
    assert lengths == [n_text + V] * K + [n_text + kept] * (L - K)
    elem = cache.keys[0].element_size()
    expected = 2 * sum(lengths) * cfg.num_key_value_heads * cfg.head_dim * elem
    assert cache.nbytes() == expected
    shape = F.LMShape(L, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                      cfg.head_dim, cfg.vocab_size)
    assert cache.nbytes() == F.kv_cache_bytes(shape, lengths, bytes_per_elem=elem)
    if keep is not None:
        full = 2 * L * (n_text + V) * cfg.num_key_value_heads * cfg.head_dim * elem
        assert full - cache.nbytes() == 2 * (L - K) * (V - keep) * cfg.num_key_value_heads * cfg.head_dim * elem


def test_efficiency_bench_tiny_writes_json(tmp_path, capsys):
    from llava.bench import efficiency

    out = tmp_path / "rows.json"
    efficiency.main(["--arch", "tiny", "--repeats", "1", "--warmup", "0", "--new-tokens", "2",
                     "--methods", "entropy,random", "--score", "vanilla=1862", "--json", str(out)])
    assert "Prefill (s)" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 1 + 2 * 3
    for row in rows:
        for key in efficiency.REQUIRED_KEYS:
            assert key in row, key
        assert row["arch"] == "tiny" and row["device"] == "cpu" and row["dtype"] == "bfloat16"
        assert row["prefill_s"] > 0 and row["latency_s"] >= row["prefill_s"]
        assert 0 < row["flops_fraction"] <= 1
        assert row["kv_checked"] and row["kv_bytes"] > row["kv_visual_bytes"] > 0
        assert row["peak_mem_bytes"] > 0
    vanilla = rows[0]
    assert vanilla["method"] == "vanilla" and vanilla["keep"] == 576 and vanilla["flops_fraction"] == 1
    assert vanilla["score"] == 1862
    by_label = {r["label"]: r for r in rows}
    assert [by_label[f"entropy@{t}"]["keep"] for t in (192, 128, 64)] == [166, 98, 29]
    assert by_label["entropy@128"]["select_s"] > 0 and by_label["entropy@128"]["score_s"] > 0
    # KV shrinks exactly by the dropped tokens in layers K..L-1 (tiny: 4 layers x 4 kv heads x 16, bf16).
    drop = vanilla["kv_bytes"] - by_label["entropy@128"]["kv_bytes"]
    assert drop == 2 * (4 - 2) * (576 - 98) * 4 * 16 * 2


def test_efficiency_bench_with_vision_tower(tmp_path):
    from llava.bench import efficiency

    rows = efficiency.main(["--arch", "tiny", "--with-vision", "--repeats", "1", "--warmup", "0",
                            "--new-tokens", "1", "--budgets", "128"])
    assert [r["label"] for r in rows] == ["vanilla", "entropy@128"]
    assert rows[0]["vision_tower"] and rows[1]["keep"] == 98
    # The vision tower is in the timed scope, so it is in the FLOPs too (it does not shrink with pruning).
    assert rows[1]["flops_fraction"] > F.prefill_flops(F.LMShape(4, 64, 128, 4, 4, 16, 640), 62, layer=2,
                                                       keep=98)["fraction"]


def test_efficiency_bench_vision_stage_rows(capsys):
    """A vision-stage method runs at layer 0 with N = T; its FLOPs split into the vision tower, its own work
    and the language model; the cache holds N visual tokens in every layer (checked inside the run)."""
    from llava.bench import efficiency

    rows = efficiency.main(["--arch", "tiny", "--with-vision", "--repeats", "1", "--warmup", "0",
                            "--new-tokens", "1", "--budgets", "64", "--methods", "cdpruner,random",
                            "--layer", "2"])
    vanilla, cdp, rnd = rows
    assert cdp["label"] == "cdpruner@64" and cdp["layer"] == 0 and cdp["keep"] == 64
    assert cdp["visual_per_layer"] == [64] * 4 and cdp["visual_tokens"] == 576
    assert cdp["layer_lengths"] == [cdp["text_tokens"] + 64] * 4
    assert rnd["layer"] == 2 and rnd["visual_per_layer"][:2] == [576, 576]
    for r in (cdp, rnd):
        parts = r["flops_vision_fraction"] + r["flops_method_fraction"] + r["flops_lm_fraction"]
        assert r["flops_fraction"] == pytest.approx(parts)
    # Vision tower + projector: the same for every row, and the whole of vanilla's non-LM work.
    assert cdp["flops_vision_fraction"] == pytest.approx(rnd["flops_vision_fraction"])
    assert vanilla["flops_vision_fraction"] + vanilla["flops_lm_fraction"] == pytest.approx(1.0)
    # CDPruner's own work holds at least its 576 x 576 similarity of the 64-wide projected features;
    # random's has no matrix product.
    assert cdp["method_flops"] >= 2 * 576 * 576 * 64 and rnd["method_flops"] == 0
    assert cdp["select_s"] > 0
    assert "cdpruner@64: selection" in capsys.readouterr().out


def test_efficiency_bench_llava_next_image_shape_at_kept_counts():
    """--image-size gives the image span LLaVA-1.6's count for that shape (672x672: 576 base + 2x2 crops' 48x48
    grid + 48 newlines = 2928, by hand); --keeps sets N after layer K, and the row's average is
    (K * V + (32 - K) * N) / 32; the KV cache is asserted against the kept tokens inside the run."""
    from llava.bench import efficiency

    rows = efficiency.main(["--arch", "tiny", "--image-size", "672x672", "--keeps", "640,160", "--repeats", "1",
                            "--warmup", "0", "--new-tokens", "1", "--methods", "entropy,dart"])
    vanilla, k640, k160, d640, _ = rows
    assert [r["label"] for r in rows] == ["vanilla", "entropy@keep640", "entropy@keep160", "dart@keep640",
                                          "dart@keep160"]
    # a row's keep is what the run kept (DART rounds to its pivots), read back from the prune trace
    assert d640["keep"] == d640["visual_per_layer"][2] <= 640
    assert vanilla["visual_tokens"] == 2928 and vanilla["image_size"] == "672x672"
    assert k640["keep"] == 640 and k160["keep"] == 160
    assert k640["visual_per_layer"] == [2928, 2928, 640, 640]
    assert k160["avg_tokens"] == pytest.approx((2 * 2928 + 30 * 160) / 32)
    drop = vanilla["kv_bytes"] - k160["kv_bytes"]  # tiny: 4 layers x 4 kv heads x 16, bf16
    assert drop == 2 * (4 - 2) * (2928 - 160) * 4 * 16 * 2
    with pytest.raises(ValueError, match="--image-size is for --arch without --with-vision"):
        efficiency.main(["--arch", "tiny", "--with-vision", "--image-size", "672x672"])
    with pytest.raises(ValueError, match="640 of 576"):
        efficiency.main(["--arch", "tiny", "--keeps", "640"])
    with pytest.raises(ValueError, match="--keeps"):
        efficiency.main(["--arch", "tiny", "--keeps", "0"])


def test_efficiency_bench_rejects_bad_input():
    from llava.bench import efficiency

    with pytest.raises(ValueError, match="--methods"):
        efficiency.main(["--arch", "tiny", "--methods", "nope"])
    with pytest.raises(ValueError, match="--questions needs --model-path"):
        efficiency.main(["--arch", "tiny", "--questions", "x.jsonl"])
    with pytest.raises(ValueError, match="--with-vision"):
        efficiency.main(["--arch", "tiny", "--methods", "cdpruner"])


def test_sync_check_runs_the_vision_stage_method_inside_the_splice(loaded_tiny, monkeypatch):
    """The CUDA sync check's vision-stage path, run on the CPU with CUDA's sync calls stubbed: the method is
    called (once, under the counting scope) through the splice with the prompt's instruction."""
    from entropyprune.config import PruneConfig
    from llava.bench import sync_check
    from llava.bench.workload import attach_random_clip_text, random_prompts

    modes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    model = loaded_tiny[1]
    saved = getattr(model.get_model(), "clip_text", None), getattr(model.get_model(), "clip_text_name", None)
    try:
        attach_random_clip_text(model, "tiny", seed=0)
        prompt = random_prompts(model, 20, 1, model.device, model.dtype, seed=0)[0]
        assert sync_check.count_vision_syncs(model, prompt, PruneConfig(method="cdpruner", keep=8)) == 0
        assert modes == ["warn", "default"]  # one counted call: the method's
    finally:
        model.get_model().clip_text, model.get_model().clip_text_name = saved
        model.set_prune(None)


def test_benchmarks_refuse_a_llava_next_checkpoint_in_one_line(tmp_path):
    from llava.bench import efficiency, prefill_tiny
    from llava.tools.make_tiny_checkpoint import build

    for fmt in ("llava", "hf"):  # image_aspect_ratio anyres; model_type llava_next
        path = build(str(tmp_path / fmt), fmt, next_=True)
        for main, tool in ((efficiency.main, "efficiency"), (prefill_tiny.main, "prefill_tiny")):
            with pytest.raises(ValueError, match=rf"^python -m llava.bench.{tool} --model-path .*: a LLaVA-1.6 "
                                                 r"\(anyres\) checkpoint.*--image-size WxH` for its FLOPs and KV$"):
                main(["--model-path", path])
    efficiency.refuse_anyres(str(tmp_path / "nothing"), "x")  # LLaVA-1.5 / unknown: nothing to refuse
