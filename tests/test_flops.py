"""Analytic FLOPs / KV-cache accounting (entropyprune.flops) and the `entropyprune flops` command."""

from __future__ import annotations

import json
import re

import pytest

from entropyprune import flops as F
from llava.cli import main

# A shape small enough to count by hand: d=8, m=12, 2 heads of 4, vocab 10, 4 layers.
TINY = F.LMShape(
    num_layers=4, hidden_size=8, intermediate_size=12, num_heads=2, num_kv_heads=2, head_dim=4, vocab_size=10
)
LLAVA7 = F.PRESETS["llava-1.5-7b"]


def test_presets():
    assert F.PRESETS["llava-1.5-7b"] == F.LMShape(32, 4096, 11008, 32, 32, 128, 32000)
    assert F.PRESETS["llava-1.5-13b"] == F.LMShape(40, 5120, 13824, 40, 40, 128, 32000)


def test_layer_flops_by_hand():
    # n = 3 tokens: each projection 2*3*8*8 = 384; QK^T and AV over 3x3 pairs 2*8*9 = 144 each;
    # FFN 3 matmuls 2*3*3*8*12 = 1728.
    t = F.layer_flops(3, TINY)
    assert t == {
        "q_proj": 384,
        "k_proj": 384,
        "v_proj": 384,
        "o_proj": 384,
        "attn_qk": 144,
        "attn_av": 144,
        "ffn": 1728,
        "total": 3552,
    }
    # causal: 1 + 2 + 3 = 6 pairs -> 2*8*6 = 96 per attention matmul; nothing else changes
    c = F.layer_flops(3, TINY, attention="causal")
    assert c["attn_qk"] == c["attn_av"] == 96
    assert c["total"] == 3552 - 2 * 144 + 2 * 96
    # one decoding token over a cache of 3 (+ itself): projections 2*8*8 = 128, 4 pairs -> 64, FFN 576
    one = F.layer_flops(1, TINY, n_ctx=4)
    assert one["total"] == 4 * 128 + 2 * 64 + 576
    assert F.layer_flops(1, TINY, n_ctx=4, attention="causal") == one
    with pytest.raises(ValueError, match="attention"):
        F.layer_flops(3, TINY, attention="sparse")


@pytest.mark.parametrize("n", [1, 7, 576, 641])
def test_mha_reduces_to_paper_eq15(n):
    for shape in (TINY, LLAVA7, F.PRESETS["llava-1.5-13b"]):
        d, m = shape.hidden_size, shape.intermediate_size
        assert F.layer_flops(n, shape)["total"] == 4 * n * n * d + 8 * n * d * d + 6 * n * m * d
        assert F.layer_flops(n, shape)["total"] == F.paper_layer_flops(n, shape)


def test_gqa_changes_only_kv_projections():
    gqa = F.LMShape(4, 8, 12, 2, 1, 4, 10)
    mha, g = F.layer_flops(3, TINY), F.layer_flops(3, gqa)
    assert g["k_proj"] == g["v_proj"] == 2 * 3 * 8 * 4 == mha["k_proj"] // 2
    for key in ("q_proj", "o_proj", "attn_qk", "attn_av", "ffn"):
        assert g[key] == mha[key]
    assert mha["total"] - g["total"] == 2 * 192


def test_pruned_total_is_k_full_plus_rest_kept():
    n_text, V = 5, 576
    for K, keep in ((2, 166), (2, 98), (1, 0), (31, 10)):
        res = F.prefill_flops(LLAVA7, n_text=n_text, n_visual=V, layer=K, keep=keep)
        full, kept = F.layer_flops(n_text + V, LLAVA7)["total"], F.layer_flops(n_text + keep, LLAVA7)["total"]
        assert res["total"] == res["prefill"] == K * full + (32 - K) * kept
        assert res["baseline"]["total"] == 32 * full
        assert res["fraction"] == pytest.approx(res["total"] / (32 * full))
        assert res["tokens_per_layer"] == [n_text + V] * K + [n_text + keep] * (32 - K)
    # two images, each pruned to its own budget
    res = F.prefill_flops(TINY, n_text=1, n_visual=4, n_images=2, layer=1, keep=2)
    assert res["tokens_per_layer"] == [9, 5, 5, 5]
    assert res["total"] == F.layer_flops(9, TINY)["total"] + 3 * F.layer_flops(5, TINY)["total"]
    # keep=None is the unpruned model
    assert F.prefill_flops(TINY, n_text=1, n_visual=4, keep=None)["fraction"] == 1.0


def test_decode_lm_head_and_terms_by_hand():
    # layers see [5, 3, 3, 3] tokens; one decoding step attends to n + 1 keys in each layer
    res = F.prefill_flops(TINY, n_text=1, n_visual=4, layer=1, keep=2, decode_steps=1, include_lm_head=True)
    assert res["prefill"] == (800 + 2560 + 2880) + 3 * 3552  # F(5) = 4*25*8 + 8*5*64 + 6*5*12*8
    assert res["decode"] == (512 + 2 * 96 + 576) + 3 * (512 + 2 * 64 + 576)
    assert res["lm_head"] == 2 * 3 * 8 * 10 + 2 * 1 * 8 * 10  # all 3 prefill positions + 1 step
    assert res["total"] == res["prefill"] + res["decode"] + res["lm_head"]
    assert sum(res["terms"].values()) == res["prefill"] + res["decode"]
    assert [row["kv_tokens"] for row in res["per_layer"]] == [6, 4, 4, 4]
    assert res["baseline"]["decode"] == 4 * (512 + 2 * 96 + 576)


def test_vision_tower_counted_once_per_image():
    v = F.VISION_PRESETS["clip-vit-l-14-336"]
    assert v.num_patches == 576
    one = F.vision_flops(v, 4096)
    n = 577
    layer = 8 * n * 1024**2 + 4 * n * n * 1024 + 4 * n * 1024 * 4096
    assert one["tower"] == 2 * 576 * 3 * 14 * 14 * 1024 + 24 * layer
    assert one["projector"] == 2 * 576 * (1024 * 4096 + 4096 * 4096)
    res = F.prefill_flops(LLAVA7, n_text=10, n_images=2, layer=2, keep=100, vision="clip-vit-l-14-336")
    assert res["vision"] == res["baseline"]["vision"] == 2 * one["total"]


def test_budget_contract():
    assert [F.resolve_keep(32, 2, 576, avg_tokens=t) for t in (192, 128, 64)] == [166, 98, 29]
    assert F.resolve_keep(32, 0, 576, avg_tokens=192) == 192
    assert F.resolve_keep(32, 2, 576, ratio=0.25) == 144
    assert F.resolve_keep(32, 2, 4, ratio=0.125) == 1  # round(0.5): halves go up, as in PruneConfig
    assert F.resolve_keep(32, 2, 576, avg_tokens=36.97) == 1
    assert F.resolve_keep(32, 2, 576, keep=200) == 200
    assert F.average_tokens(32, 2, 576, 166) == 191.625
    assert F.resolve_keep(15, 1, 576, avg_tokens=522.8) == 519  # exact: (7842 - 576) / 14
    with pytest.raises(F.BudgetError, match="keep 700 keeps 700 of 576 visual tokens"):
        F.resolve_keep(32, 2, 576, keep=700)
    with pytest.raises(F.BudgetError) as err:
        F.resolve_keep(32, 2, 576, avg_tokens=10)
    assert err.value.name == "avg_tokens"
    with pytest.raises(ValueError, match="exactly one"):
        F.resolve_keep(32, 2, 576, keep=1, ratio=0.5)


def test_eq16_and_simplified_ratio():
    assert F.simplified_ratio(32, 2, 0.75) == pytest.approx(30 / 32 * 0.75)
    # with no text tokens the counted fraction is exactly 1 - Eq. 16
    res = F.prefill_flops(LLAVA7, n_text=0, layer=2, keep=166)
    assert 1 - F.eq16_reduction(LLAVA7, 576, 166, 2) == pytest.approx(res["fraction"], rel=1e-12)
    # and R ~ (L-K)/L r within a point, as the paper argues (d >> n)
    simplified = F.simplified_ratio(32, 2, 1 - 166 / 576)
    assert F.eq16_reduction(LLAVA7, 576, 166, 2) == pytest.approx(simplified, abs=0.01)


def test_kv_cache_bytes():
    assert F.kv_cache_bytes(TINY, [5, 3, 3, 3]) == 2 * (5 + 3 * 3) * 2 * 4 * 2
    gqa = F.LMShape(4, 8, 12, 2, 1, 4, 10)
    assert F.kv_cache_bytes(gqa, [5, 3, 3, 3], bytes_per_elem=4) == 2 * 14 * 1 * 4 * 4
    # 7B, visual tokens only: 2 x 32 layers x 576 tokens x 32 heads x 128 x 2 B = 288 MiB (Table 5 vanilla)
    assert F.kv_cache_bytes(LLAVA7, [576] * 32) == 2 * 32 * 576 * 32 * 128 * 2 == 288 * 2**20
    with pytest.raises(ValueError, match="32 layers"):
        F.kv_cache_bytes(LLAVA7, [576] * 31)


def test_table5_kv_column_is_avg_tokens_visual_only():
    for budget in (192, 128):
        keep = F.resolve_keep(32, 2, 576, avg_tokens=budget)
        mib = F.kv_cache_bytes(LLAVA7, [576] * 2 + [keep] * 30) / 2**20
        assert mib == pytest.approx(F.TABLE5["entropyprune"][budget]["kv_mb"], abs=0.05)


# The documented convention (module docstring, docs/Efficiency.md): avg_tokens budgets, K = 2, an MME
# prompt of 62 text tokens, full attention, CLIP tower + projector counted, no decoding.
@pytest.mark.parametrize("budget", [192, 128])
@pytest.mark.parametrize("attention", ["full", "causal"])
def test_table5_flops_reproduced(budget, attention):
    keep = F.resolve_keep(32, 2, 576, avg_tokens=budget)
    clip = "clip-vit-l-14-336"
    res = F.prefill_flops(LLAVA7, n_text=62, layer=2, keep=keep, vision=clip, attention=attention)
    assert 100 * res["fraction"] == pytest.approx(F.TABLE5["entropyprune"][budget]["flops"], abs=1.5)
    # the decoder layers alone (Eq. 16's scope) undercount the paper's number by about 3 points
    lm_only = F.prefill_flops(LLAVA7, n_text=62, layer=2, keep=keep, attention=attention)
    assert F.TABLE5["entropyprune"][budget]["flops"] - 100 * lm_only["fraction"] > 2.5


def test_from_config_llava_and_hf_formats(tmp_path):
    llava = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "num_hidden_layers": 40,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_attention_heads": 40,
        "vocab_size": 32000,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    }
    assert F.LMShape.from_config(llava) == F.PRESETS["llava-1.5-13b"]
    # HF llava-1.5-7b-hf leaves the LlamaConfig defaults out of text_config
    hf = {
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"model_type": "llama", "vocab_size": 32064, "num_key_value_heads": 8},
        "vision_config": {"hidden_size": 1024},
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))
    for src in (tmp_path, tmp_path / "config.json"):
        assert F.LMShape.from_config(src) == F.LMShape(32, 4096, 11008, 32, 8, 128, 32064)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        F.LMShape.from_config({"hidden_size": 8})


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_cli_table_ends_with_flops_line(capsys):
    code, out = _run(
        capsys,
        "flops",
        "--model",
        "llava-1.5-7b",
        "--layer",
        "2",
        "--avg-tokens",
        "192",
        "--text-tokens",
        "62",
        "--vision",
    )
    assert code == 0
    lines = out.out.strip().splitlines()
    assert re.fullmatch(r"FLOPs: \d+\.\d%", lines[-1])
    assert abs(float(lines[-1][7:-1]) - 42.3) <= 1.5
    assert "keep 166 of 576" in out.out and "95.8 MiB of 288.0 MiB" in out.out


def test_cli_json(capsys, tmp_path):
    code, out = _run(capsys, "flops", "--keep", "98", "--text-tokens", "62", "--decode-steps", "2", "--json")
    assert code == 0
    rep = json.loads(out.out)
    assert rep["keep"] == 98 and rep["decode_steps"] == 2
    assert rep["flops_percent"] == round(100 * rep["fraction"], 1)
    assert rep["flops"]["total"] == rep["flops"]["prefill"] + rep["flops"]["decode"]
    # --model also takes a config.json
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 40}}))
    argv = ["flops", "--model", str(tmp_path), "--ratio", "0.25", "--text-tokens", "0", "--json"]
    code, out = _run(capsys, *argv)
    rep = json.loads(out.out)
    assert rep["shape"]["num_layers"] == 40 and rep["keep"] == 144


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--keep", "700"], "--keep 700 keeps 700 of 576 visual tokens after layer 2 of 32"),
        (["--avg-tokens", "10"], "--avg-tokens 10 keeps -28 of 576 visual tokens after layer 2 of 32"),
        (["--avg-tokens", "10"], "use --avg-tokens in [36.9375, 576]"),
        (["--avg-tokens", "600"], "--avg-tokens 600 keeps 601 of 576"),
        (["--keep", "0"], "--keep must be an integer >= 1, got 0"),
        (["--ratio", "1.5"], "--ratio must be a number in (0, 1], got 1.5"),
        (["--keep", "10", "--layer", "32"], "--layer must be in [0, 31] for a 32-layer model, got 32"),
        (["--keep", "10", "--model", "no/such/model"], "--model: no/such/model: not a preset"),
        (["--keep", "10", "--images", "-1"], "argument --images"),
    ],
)
def test_cli_errors_name_the_flag(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["flops", "--text-tokens", "62", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert message in err.err and err.out == ""


def test_cli_image_size_counts_llava_next_tokens_per_shape(capsys, tmp_path):
    # 1024x768 on the published pinpoints: canvas 672x672 (2x2 crops), the 48x48 grid cut to 36 rows of 48
    # (768 * 48 / 1024 = 36), a newline per row: V = 576 + 36 * 48 + 36 = 2340
    argv = ["flops", "--model", "llava-next-7b", "--image-size", "1024x768", "--keep", "320", "--layer", "2",
            "--text-tokens", "62", "--vision", "--json"]
    code, out = _run(capsys, *argv)
    rep = json.loads(out.out)
    assert code == 0 and rep["visual_tokens"] == 2340 and rep["keep"] == 320
    assert rep["anyres"]["grid"] == [36, 48] and rep["anyres"]["views"] == 5
    assert rep["tokens_per_layer"] == [62 + 2340] * 2 + [62 + 320] * 30
    # fp16 K and V of the visual tokens: (2 layers x 2340 + 30 x 320) tokens x 2 x 4096 x 2 bytes
    assert rep["kv_cache_bytes"]["visual"] == (2 * 2340 + 30 * 320) * 2 * 4096 * 2
    assert rep["avg_visual_tokens"] == (2 * 2340 + 30 * 320) / 32
    # the tower runs on the base view and the four crops
    one_view = F.vision_flops(F.VISION_PRESETS["clip-vit-l-14-336"], 4096)["total"]
    assert rep["flops"]["vision"] == 5 * one_view
    # the same from a LLaVA-format config.json with its pinpoints; the table names the shape
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
           "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672],
                                                                    [1008, 336], [336, 1008]]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, out = _run(capsys, "flops", "--model", str(tmp_path), "--image-size", "1280x480", "--keep", "320",
                     "--text-tokens", "62")
    # 1280x480: canvas 1008x336 (1x3 crops), grid 24 x 72 cut to 64 columns (1280 * 24 / 480): 576 + 24*64 + 24
    assert code == 0 and "keep 320 of 2136 visual tokens" in out.out
    assert "V = 576 base + 24x64 grid + 24 newlines = 2136 (4 views" in out.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image-size", "1024x768"], "--image-size needs an anyres (LLaVA-1.6) model, but --model llava-1.5-7b"),
        (["--image-size", "1024", "--model", "llava-next-7b"],
         "--image-size: image size '1024': expected WIDTHxHEIGHT"),
        (["--image-size", "1024x768", "--visual-tokens", "9"], "not allowed with argument"),
        (["--image-size", "64x64", "--model", "llava-next-7b", "--keep", "2000"],
         "--keep 2000 keeps 2000 of 1176 visual tokens"),
    ],
)
def test_cli_image_size_errors(capsys, argv, message):
    if "--keep" not in argv:
        argv = [*argv, "--keep", "320"]
    with pytest.raises(SystemExit) as exc:
        main(["flops", "--text-tokens", "62", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert message in err.err and err.out == ""
