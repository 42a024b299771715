"""Build a complete tiny LLaVA-1.5 checkpoint offline and deterministically.

    python -m llava.tools.make_tiny_checkpoint --out checkpoints/llava-v1.5-tiny [--format llava|hf|llama] [--seed 0]
        [--absolute-tower-path] [--tower random|colour]

What it writes, in the real formats:
- a tiny CLIP as its own folder (336 px, patch 14: 576 visual tokens, like CLIP-L/14-336), a full CLIPModel
  checkpoint as openai/clip-vit-large-patch14-336 is: the vision tower under `vision_model.*`, the text
  tower, both projections, the preprocessor config and a byte-level BPE CLIP tokenizer (what CDPruner reads);
  `mm_vision_tower` names the folder (LLaVA format) or the vision tower is inside the weights (hf format);
- a real SentencePiece `tokenizer.model`, trained on the spot on prompt-like text;
- random Llama weights (several heads, 4 layers), sharded safetensors with an index (or `.bin` shards);
- config.json, generation_config.json, tokenizer_config.json, special_tokens_map.json.

`--next` writes a tiny LLaVA-1.6 (LLaVA-NeXT, anyres) checkpoint instead, in LLaVA's format (image_aspect_ratio
"anyres", image_grid_pinpoints, mm_patch_merge_type "spatial_unpad", `model.image_newline`) or transformers'
(`LlavaNextForConditionalGeneration`, its image processor config): an 84 px tower (patch 14: 36 tokens a view)
and LLaVA-1.6's five grids scaled to it (1x2, 2x1, 2x2, 3x1, 1x3 crops), so an image has 36 + up to 156
tokens. `--language-model mistral` gives it a Mistral language model (GQA, rope_theta 1e6, sliding_window
null), as llava-v1.6-mistral-7b.

`--format llama` writes the plain language model instead (a Llama folder as lmsys/vicuna-7b-v1.5 is: no
projector, no `mm_*` fields) with the tiny CLIP beside it in its folder: what LLaVA's training starts from
(`python -m llava.train.train --model_name_or_path OUT --vision_tower OUT/clip-vit-tiny-patch14-336`).

`--tower colour` sets the tiny CLIP's vision weights by hand so each patch feature is its colour contrast,
brightness and position (llava/tools/colour_tower.py): the tower the synthetic task's model trains on.

Random weights mean the answers are gibberish; the checkpoint exists to exercise every code path.
The output is byte-for-byte the same for the same arguments, wherever it is written (unless
--absolute-tower-path), and the LLaVA format loads in official LLaVA too (docs/Evaluation.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import torch

TOWER_DIR = "clip-vit-tiny-patch14-336"
NEXT_TOWER_DIR = "clip-vit-tiny-patch14-84"
NEXT_IMAGE_SIZE = 84
# LLaVA-1.6's [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] for an 84 px tower ([w, h]; the set
# is symmetric, so transformers' (h, w) reading gives the same grids).
NEXT_PINPOINTS = [[84, 168], [168, 84], [168, 168], [252, 84], [84, 252]]

_CORPUS_LINES = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "USER: What is shown in this image? ASSISTANT: A red square on a white background.",
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Is there a dog in this picture? Please answer yes or no. Yes No yes no",
    "How many circles are there in the image? 0 1 2 3 4 5 6 7 8 9 10 one two three four five",
    "What color is the car? red green blue yellow black white orange purple gray brown",
    "Reference OCR token: STOP, EXIT, 42, OPEN, SALE",
    "Context: The picture shows a map of the United States.\nWhich of these states is farthest north?",
    "A. Maine\nB. Texas\nC. Florida\nD. Ohio\nThe answer is A.",
    "Question: Which object is on the left? Options: the cup, the book, the lamp, the phone.",
    "Describe the scene in detail. There is a person standing next to a tree near a river.",
    "Is this photo taken in a place of worship? Is the man on the left wearing a hat?",
    "Please read the text in this image and translate it into English.",
    "What is the total price? The code prints the sum of the numbers in the list.",
    "请直接回答选项字母。图中有几个人？",
]


def _corpus() -> list[str]:
    """The training sentences: the prompt-like lines, some with a number, one sentence per text line."""
    text = "".join(line + (f" {i}" if i % 3 == 0 else "") + "\n" for i in range(40) for line in _CORPUS_LINES)
    return text.split("\n")[:-1]


def _train_tokenizer(out_dir: str, seed: int, legacy: bool = False) -> int:
    """``legacy``: what tokenizer_config.json says. True keeps the ``▁`` of a word after ``</s>`` (``</s>▁USER``), so
    a later round of a conversation is the same tokens as that round tokenized alone after a BOS and LLaVA's
    ``preprocess_v1`` (which takes its per-round correction only for non-legacy tokenizers) labels multi-turn
    samples correctly. False (the default): this vocabulary splits ``</s>USER`` as ``U SER``, one token fewer than
    Vicuna's correction assumes, and every multi-turn sample is masked (docs/Training.md)."""
    import sentencepiece as spm

    # Trained from memory into memory: a corpus file or model prefix would be stored, path and all, in the
    # model's trainer spec, and the tokenizer.model bytes would then depend on the temporary folder's name.
    model = io.BytesIO()
    # Llama's layout: <unk>=0, <s>=1, </s>=2, byte fallback, identity normalisation, dummy prefix.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=model, model_type="bpe", vocab_size=640,
        hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, split_digits=True,
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, num_threads=1,
        shuffle_input_sentence=False, seed_sentencepiece_size=100000, minloglevel=2,
    )
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<unk>", "clean_up_tokenization_spaces": False, "legacy": legacy,
        "model_max_length": 2048, "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    })
    _write_json(os.path.join(out_dir, "special_tokens_map.json"),
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    return sp.get_piece_size()


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   image_size=336, patch_size=14, projection_dim=32, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5, num_channels=3)


# The text half of the tiny CLIP: CLIP's 77-token context, its projection width equal to the vision half's.
TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                      projection_dim=TINY_VISION["projection_dim"])


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-character table, which CLIP's BPE vocabulary is written in: printable bytes stand for
    themselves, the other bytes are shifted to 256 and above."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _write_clip_tokenizer(out_dir: str) -> dict:
    """A CLIP tokenizer with no merges: every byte alone and at a word's end (`</w>`), then CLIP's two
    special tokens. Words become characters, which is all a random text tower needs. Returns the ids."""
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    ids = {"bos_token_id": len(vocab), "eos_token_id": len(vocab) + 1, "vocab_size": len(vocab) + 2}
    vocab.update({"<|startoftext|>": ids["bos_token_id"], "<|endoftext|>": ids["eos_token_id"]})
    _write_json(os.path.join(out_dir, "vocab.json"), vocab)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": TINY_CLIP_TEXT["max_position_embeddings"],
        "do_lower_case": True, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    return ids


def tower_state_dict(tower) -> dict[str, torch.Tensor]:
    """The tower's weights under CLIPVisionModel's `vision_model.*` names, the layout of
    openai/clip-vit-large-patch14-336.

    transformers 5's CLIPVisionModel has no `vision_model` level and saves its keys without the prefix;
    transformers 4.x (official LLaVA runs 4.37) matches none of those and silently initialises the tower at
    random. transformers 5 reads the prefixed layout too (it strips the prefix on load), so both read this one.
    """
    return {k if k.startswith("vision_model.") else "vision_model." + k: t.contiguous()
            for k, t in tower.state_dict().items()}


def _make_tower(out_dir: str, seed: int, image_size: int = 336, colour: bool = False):
    """The tiny CLIP folder; returns its vision tower (the only half LLaVA itself uses). `colour`: the vision
    weights set by hand (llava/tools/colour_tower.py) after they are drawn.

    The vision weights come first from their own seed, so the text half (drawn after, from another seed)
    leaves them as they were before the text half existed."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModel

    from llava.model.multimodal_encoder.clip_encoder import clip_image_processor_class

    torch.manual_seed(seed + 1)
    vision = {**TINY_VISION, "image_size": image_size}
    tower = CLIPVisionModel(CLIPVisionConfig(**vision)).eval()
    if colour:
        from llava.tools.colour_tower import set_colour_weights

        set_colour_weights(tower)
    ids = _write_clip_tokenizer(out_dir)
    text_config = {**TINY_CLIP_TEXT, **ids, "pad_token_id": ids["eos_token_id"]}
    torch.manual_seed(seed + 2)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    visual_projection = torch.randn(TINY_VISION["projection_dim"], TINY_VISION["hidden_size"]) * 0.1
    config = CLIPConfig(text_config=text_config, vision_config=vision,
                        projection_dim=TINY_VISION["projection_dim"])
    config.architectures = ["CLIPModel"]
    config.save_pretrained(out_dir)
    state = {**tower_state_dict(tower), **{k: t.contiguous() for k, t in text.state_dict().items()},
             "visual_projection.weight": visual_projection, "logit_scale": torch.tensor(2.6592)}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    clip_image_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    ).save_pretrained(out_dir)
    return tower


def tiny_text_config(vocab_size: int, hidden_size: int = 64, layers: int = 4, heads: int = 4) -> dict:
    return dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, hidden_act="silu", pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )


QK_INIT_STD = 0.15


def _train_init_state(text: dict, seed: int) -> dict[str, torch.Tensor]:
    """``--init train``: a language model to train from, not to test decoding with. Every matrix N(0, 0.02)
    (GPT-2's and Llama's recipe), except the query and key projections, N(0, QK_INIT_STD): at 0.02 a head's
    attention over the 576 visual tokens starts uniform, at 0.15 its scores depend on the tokens' content from
    the first step (on the synthetic task's text-only control both learn as fast: docs/Training.md). Norm
    weights 1."""
    g = torch.Generator().manual_seed(seed)
    d, m, v = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    kv = text["num_key_value_heads"] * (d // text["num_attention_heads"])

    def w(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    sd = {"model.embed_tokens.weight": w(v, d)}
    for i in range(text["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": w(d, d, std=QK_INIT_STD),
            p + "self_attn.k_proj.weight": w(kv, d, std=QK_INIT_STD),
            p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(m, d), p + "mlp.up_proj.weight": w(m, d), p + "mlp.down_proj.weight": w(d, m),
            p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d),
        })
    sd["model.norm.weight"] = torch.ones(d)
    sd["lm_head.weight"] = w(v, d)
    return sd


def _random_llava_state(text: dict, mm_hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with LLaVA's key names. The scale is larger than training init so logits are peaked
    and greedy decoding is not decided by float noise."""
    g = torch.Generator().manual_seed(seed)
    d, m, v = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    hd = d // text["num_attention_heads"]
    kv = text["num_key_value_heads"] * hd

    def w(*shape, std=0.08):
        return torch.randn(*shape, generator=g) * std

    sd = {"model.embed_tokens.weight": w(v, d, std=1.0)}
    for i in range(text["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "self_attn.q_proj.weight": w(d, d, std=0.25), p + "self_attn.k_proj.weight": w(kv, d, std=0.25),
            p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, d),
            p + "mlp.gate_proj.weight": w(m, d), p + "mlp.up_proj.weight": w(m, d), p + "mlp.down_proj.weight": w(d, m),
            p + "input_layernorm.weight": 1 + w(d, std=0.1), p + "post_attention_layernorm.weight": 1 + w(d, std=0.1),
        })
    sd["model.norm.weight"] = 1 + w(d, std=0.1)
    sd["lm_head.weight"] = w(v, d, std=0.3)
    sd["model.mm_projector.0.weight"] = w(d, mm_hidden, std=0.3)
    sd["model.mm_projector.0.bias"] = w(d, std=0.02)
    sd["model.mm_projector.2.weight"] = w(d, d, std=0.2)
    sd["model.mm_projector.2.bias"] = w(d, std=0.02)
    return sd


def _save_sharded(state: dict[str, torch.Tensor], out_dir: str, weights: str, shards: int = 2) -> None:
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    ext = "safetensors" if weights == "safetensors" else "bin"
    stem = "model" if weights == "safetensors" else "pytorch_model"
    for s in range(shards):
        name = f"{stem}-{s + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k].contiguous() for k in keys[s * per:(s + 1) * per]}
        if weights == "safetensors":
            from safetensors.torch import save_file

            save_file(part, os.path.join(out_dir, name), metadata={"format": "pt"})
        else:
            torch.save(part, os.path.join(out_dir, name))
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(os.path.join(out_dir, f"{stem}.{ext}.index.json"),
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def _next_processor_config(tower_dir: str) -> dict:
    """transformers' LlavaNextImageProcessor settings: the tower's CLIP preprocessing plus the pinpoints."""
    with open(os.path.join(tower_dir, "preprocessor_config.json"), encoding="utf-8") as f:
        clip = json.load(f)
    keep = ("crop_size", "do_center_crop", "do_convert_rgb", "do_normalize", "do_rescale", "do_resize",
            "image_mean", "image_std", "resample", "rescale_factor", "size")
    return {**{k: clip[k] for k in keep if k in clip}, "do_pad": True, "image_grid_pinpoints": NEXT_PINPOINTS,
            "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor"}


def _hf_state(llava_sd: dict, tower, layout: str, vocab_padded: int) -> dict[str, torch.Tensor]:
    """The same weights under transformers' LlavaForConditionalGeneration names (old or new layout)."""
    lm = "language_model.model." if layout == "old" else "model.language_model."
    head = "language_model.lm_head." if layout == "old" else "lm_head."
    proj = "multi_modal_projector." if layout == "old" else "model.multi_modal_projector."
    vis = "vision_tower." if layout == "old" else "model.vision_tower."
    out = {}
    for k, t in llava_sd.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            # Rows for the added <image> and <pad> tokens, padded to a multiple of 64 as the conversion does.
            t = torch.cat([t, t.mean(0, keepdim=True).expand(vocab_padded - t.shape[0], -1)])
        if k == "model.image_newline":
            k = "image_newline" if layout == "old" else "model.image_newline"
        elif k.startswith("model.mm_projector."):
            k = proj + {"0": "linear_1", "2": "linear_2"}[k.split(".")[2]] + "." + k.split(".")[3]
        elif k.startswith("lm_head."):
            k = head + k[len("lm_head."):]
        else:
            k = lm + k[len("model."):]
        out[k] = t
    for k, t in tower_state_dict(tower).items():  # vision_tower.vision_model.*, as in llava-hf's checkpoints
        out[vis + k] = t
    return out


def _mistral_text(text: dict) -> dict:
    """The tiny text config as Mistral-7B-Instruct-v0.2 differs from Llama: GQA, rope_theta 1e6, no window."""
    return {**text, "num_key_value_heads": 2, "rope_theta": 1000000.0, "sliding_window": None}


def build(out: str, fmt: str = "llava", seed: int = 0, weights: str = "safetensors", hf_layout: str = "new",
          absolute_tower: bool = False, next_: bool = False, language_model: str = "llama",
          tower_kind: str = "random", hidden_size: int = 64, layers: int = 4, heads: int = 4, init: str = "peaked",
          tokenizer_legacy: bool = False) -> str:
    """Write the checkpoint to `out`; the same arguments give the same bytes, whatever the folder.

    `mm_vision_tower` names the tower folder relative to the checkpoint, which our loader resolves and which
    survives copying the checkpoint. Official LLaVA resolves it against the working directory instead;
    `absolute_tower` writes the tower's absolute path for it (the checkpoint is then tied to `out`).
    """
    if fmt not in ("llava", "hf", "llama"):
        raise ValueError(f"--format must be 'llava', 'hf' or 'llama', got {fmt!r}")
    if language_model not in ("llama", "mistral"):
        raise ValueError(f"--language-model must be 'llama' or 'mistral', got {language_model!r}")
    if (next_ or language_model != "llama") and fmt == "llama":
        raise ValueError("--next and --language-model mistral write LLaVA-1.6 checkpoints: use --format llava or hf")
    if tower_kind not in ("random", "colour"):
        raise ValueError(f"--tower must be 'random' or 'colour', got {tower_kind!r}")
    if init not in ("peaked", "train"):
        raise ValueError(f"--init must be 'peaked' or 'train', got {init!r}")
    if init == "train" and fmt != "llama":
        raise ValueError("--init train is a starting point for training: use it with --format llama")
    for flag, value in (("--hidden-size", hidden_size), ("--layers", layers), ("--heads", heads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if hidden_size % heads or (hidden_size // heads) % 2:
        raise ValueError(f"--hidden-size {hidden_size} must split into --heads {heads} heads of an even size (RoPE)")
    if language_model != "llama" and not next_:
        raise ValueError("--language-model mistral is for LLaVA-1.6 (llava-v1.6-mistral-7b): add --next")
    os.makedirs(out, exist_ok=True)
    vocab = _train_tokenizer(out, seed, legacy=tokenizer_legacy)
    tower_name = NEXT_TOWER_DIR if next_ else TOWER_DIR
    tower_dir = os.path.join(out, tower_name)
    os.makedirs(tower_dir, exist_ok=True)
    tower = _make_tower(tower_dir, seed, NEXT_IMAGE_SIZE if next_ else 336, colour=tower_kind == "colour")
    text = tiny_text_config(vocab, hidden_size, layers, heads)
    if language_model == "mistral":
        text = _mistral_text(text)
    if init == "train":
        sd = _train_init_state(text, seed)
    else:
        sd = _random_llava_state(text, TINY_VISION["hidden_size"], seed)
    if next_:  # drawn last, from its own seed: the other weights are those of the LLaVA-1.5 checkpoint
        g = torch.Generator().manual_seed(seed + 3)
        sd["model.image_newline"] = torch.randn(text["hidden_size"], generator=g)
    _write_json(os.path.join(out, "generation_config.json"),
                {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 2048})
    if fmt == "llama":
        # The language model alone, in transformers' Llama layout: the projector is what stage 1 trains.
        config = {"_name_or_path": "llama-tiny", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  **text, "torch_dtype": "float32"}
        _write_json(os.path.join(out, "config.json"), config)
        _save_sharded({k: t for k, t in sd.items() if not k.startswith("model.mm_projector.")}, out, weights)
        return out
    if fmt == "llava":
        config = {
            # A fixed name, not the output folder's, so that the bytes do not depend on where it is built.
            "_name_or_path": "llava-v1.6-tiny" if next_ else "llava-v1.5-tiny",
            "architectures": ["LlavaMistralForCausalLM" if language_model == "mistral" else "LlavaLlamaForCausalLM"],
            "model_type": "llava_mistral" if language_model == "mistral" else "llava",
            **text, "max_length": 2048, "torch_dtype": "float32",
            "mm_vision_tower": os.path.abspath(tower_dir) if absolute_tower else tower_name,
            "mm_hidden_size": TINY_VISION["hidden_size"],
            "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
            "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
            "use_mm_proj": True, "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
            "mm_resampler_type": None, "tokenizer_padding_side": "right",
        }
        if next_:
            config.update(image_aspect_ratio="anyres", image_grid_pinpoints=NEXT_PINPOINTS,
                          mm_patch_merge_type="spatial_unpad")
        _write_json(os.path.join(out, "config.json"), config)
        _save_sharded(sd, out, weights)
        return out
    # transformers' format: <image> and <pad> added to the tokenizer, the tower inside the weights.
    from transformers import AutoTokenizer

    # local_files_only is stored in tokenizer_config.json; left unset it would follow HF_HUB_OFFLINE.
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(out)
    image_id, pad_id = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<pad>")
    vocab_padded = -(-(vocab + 2) // 64) * 64
    text_hf = {**text, "vocab_size": vocab_padded, "model_type": language_model, "pad_token_id": pad_id}
    vision_hf = {**TINY_VISION, "model_type": "clip_vision_model"}
    if next_:
        vision_hf["image_size"] = NEXT_IMAGE_SIZE
    config = {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": image_id,
        "pad_token_id": pad_id, "projector_hidden_act": "gelu", "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default", "text_config": text_hf, "vision_config": vision_hf,
        "torch_dtype": "float32", "tie_word_embeddings": False, "image_seq_length": 576,
    }
    if next_:
        config.update(architectures=["LlavaNextForConditionalGeneration"], model_type="llava_next",
                      image_grid_pinpoints=NEXT_PINPOINTS, image_seq_length=(NEXT_IMAGE_SIZE // 14) ** 2)
    _write_json(os.path.join(out, "config.json"), config)
    if next_:
        _write_json(os.path.join(out, "preprocessor_config.json"), _next_processor_config(tower_dir))
    else:
        shutil.copy(os.path.join(tower_dir, "preprocessor_config.json"),
                    os.path.join(out, "preprocessor_config.json"))
    shutil.rmtree(tower_dir)
    _save_sharded(_hf_state(sd, tower, hf_layout, vocab_padded), out, weights)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--format", default="llava", choices=["llava", "hf", "llama"],
                    help="llava / hf: a LLaVA-1.5 checkpoint; llama: the language model alone, for training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default="safetensors", choices=["safetensors", "bin"])
    ap.add_argument("--hf-layout", default="new", choices=["new", "old"],
                    help="key layout of hf-format weights (transformers >= 4.52 is 'new')")
    ap.add_argument("--absolute-tower-path", action="store_true",
                    help="write mm_vision_tower as an absolute path, for official LLaVA run from any folder")
    ap.add_argument("--next", action="store_true",
                    help="a LLaVA-1.6 (LLaVA-NeXT, anyres) checkpoint: 84 px tower, small pinpoints, image_newline")
    ap.add_argument("--language-model", default="llama", choices=["llama", "mistral"],
                    help="with --next: the language model's architecture (mistral: as llava-v1.6-mistral-7b)")
    ap.add_argument("--tower", default="random", choices=["random", "colour"],
                    help="colour: the vision weights set by hand so patch features are colour and position "
                         "(llava/tools/colour_tower.py), the tower the synthetic task's model is trained on")
    ap.add_argument("--hidden-size", type=int, default=64, help="the language model's width (MLP: twice that)")
    ap.add_argument("--layers", type=int, default=4, help="the language model's decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (as many key/value heads)")
    ap.add_argument("--init", default="peaked", choices=["peaked", "train"],
                    help="peaked: large random weights, so greedy decoding is stable (tests); train: a training "
                         "init (N(0, 0.02), query/key N(0, 0.15)), with --format llama")
    ap.add_argument("--tokenizer-legacy", action="store_true",
                    help="write legacy: true in tokenizer_config.json, so LLaVA's v1 label masks fit multi-turn "
                         "conversations with this vocabulary")
    args = ap.parse_args(argv)
    path = build(args.out, args.format, args.seed, args.weights, args.hf_layout, args.absolute_tower_path,
                 args.next, args.language_model, args.tower, args.hidden_size, args.layers, args.heads, args.init,
                 args.tokenizer_legacy)
    print(f"tiny {'LLaVA-1.6 ' if args.next else ''}{args.format} checkpoint written to {path}")


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
