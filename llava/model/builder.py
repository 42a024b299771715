"""load_pretrained_model: LLaVA's loader, for LLaVA-format and transformers-format checkpoints alike."""

from __future__ import annotations

import os
import warnings

import torch

from llava.model.checkpoint import TOWER, check_complete, load_weights, meta_parameters, read_json, weight_files
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``"bf16"`` / ... (or a torch.dtype) -> torch.dtype; a clear error for anything else."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown torch_dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(name)


def _download(name: str) -> str | None:
    """The local snapshot of hub id `name`: from the hub cache, downloaded first when online.

    None when `name` is no hub id, or when offline (HF_HUB_OFFLINE=1) and the cache does not hold it.
    """
    if not _looks_like_hub_id(name):
        return None
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    try:
        return snapshot_download(name, local_files_only=offline)
    except Exception:
        if offline:
            return None
        raise


def resolve_model_path(model_path: str) -> str:
    """A local folder as is; a hub id downloaded (only when online); otherwise an error naming the path."""
    path = os.path.expanduser(model_path)
    if os.path.isdir(path):
        return path
    local = _download(model_path)
    if local:
        return local
    raise FileNotFoundError(
        f"model folder not found: {model_path!r}. Pass a local checkpoint folder or a hub id such as "
        "liuhaotian/llava-v1.5-7b (downloads need network access; offline, only the hub cache is searched)."
    )


def resolve_vision_tower(name: str | None, model_path: str, from_config: bool = True) -> str:
    """The CLIP tower's folder: `name` from config.json (from_config) or given by the caller (vision_tower=)."""
    if not name:
        raise ValueError(
            f"{os.path.join(model_path, 'config.json')} has no 'mm_vision_tower': this is not a LLaVA checkpoint "
            "(LLaVA-1.5 configs name the CLIP tower, e.g. openai/clip-vit-large-patch14-336)"
        )
    name = os.path.expanduser(name)
    inside = os.path.join(model_path, name)
    # A relative name in config.json is a folder inside the checkpoint first (the tiny checkpoints' layout, which
    # keeps working when the checkpoint is copied), then one in the working directory, as official LLaVA reads it.
    # A name the caller gives is relative to the working directory first.
    candidates = (inside, name) if from_config else (name, inside)
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    local = _download(name)
    if local:
        return local
    raise FileNotFoundError(
        f"vision tower {name!r} (mm_vision_tower in {model_path}/config.json) was not found as a folder. "
        "Download it, or pass vision_tower=/path/to/clip-vit-large-patch14-336 (CLI: --vision-tower)."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device) -> torch.device:
    """`device` ("cuda", "cuda:1", "cpu", a torch.device; None: cuda when available) as a torch.device that this
    torch build and machine can use; otherwise a ValueError naming it."""
    name = device if device is not None else default_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {name!r} is not a device: {err} (use cpu, cuda or cuda:N)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)")
            raise ValueError(f"--device {name!r}: {why} (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {name!r}: MPS is not available in this torch build or machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: only cpu, cuda and mps devices are supported")
    return dev


def load_pretrained_model(model_path, model_base=None, model_name=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device=None, torch_dtype=None, attn_implementation="sdpa",
                          use_flash_attn=False, vision_tower=None, prune=None, **kwargs):
    """Load a LLaVA-1.5 or LLaVA-1.6 checkpoint; returns (tokenizer, model, image_processor, context_len).

    model_path: a local folder or a hub id, in LLaVA's format (`model_type` llava / llava_llama / llava_mistral,
    the CLIP tower fetched from `mm_vision_tower`) or transformers' (`LlavaForConditionalGeneration` or
    `LlavaNextForConditionalGeneration`, tower inside); see docs/LLaVA-NeXT.md for LLaVA-1.6.
    device: "cuda", "cpu", ... (default: cuda when available). torch_dtype: default float16 on a GPU and
    float32 on the CPU. prune: an `entropyprune.PruneConfig` to turn visual-token pruning on.
    """
    if load_8bit or load_4bit:
        raise NotImplementedError("8-bit and 4-bit loading are not supported; load in float16 or bfloat16")
    if model_base is not None:
        raise NotImplementedError(
            "model_base (LoRA or projector-only checkpoints) is not supported; merge the weights first"
        )
    if prune is not None:
        from entropyprune.ecl import resolve_auto_layer

        # `--prune-layer auto`: the collapse layer stored for this model; fails before any weight is read.
        prune = resolve_auto_layer(prune, model_path)
    if use_flash_attn:
        attn_implementation = "flash_attention_2"
    if isinstance(device_map, dict) and "" in device_map and device is None:
        device = device_map[""]
    device = resolve_device(device)
    if torch_dtype is not None:
        torch_dtype = parse_dtype(torch_dtype)
    dtype = torch_dtype or (torch.float16 if device.type == "cuda" else torch.float32)

    path = resolve_model_path(model_path)
    config = LlavaConfig.from_pretrained(path)
    config.attn_implementation = "sdpa"
    if config.checkpoint_format == "llava":
        config.mm_vision_tower = resolve_vision_tower(vision_tower or config.mm_vision_tower, path,
                                                      from_config=vision_tower is None)
    elif vision_tower is not None:
        warnings.warn("vision_tower is ignored for transformers-format checkpoints: the tower is in the checkpoint",
                      stacklevel=2)

    files = weight_files(path)  # before the tower loads: a checkpoint without weights fails at once
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config)
    tower = model.get_vision_tower()
    if config.checkpoint_format == "llava":
        # As in LLaVA: the tower is not in the checkpoint; its own pretrained weights are loaded. A checkpoint
        # trained with the tower unfrozen (unfreeze_mm_vision_tower) holds its tuned tower, which LLaVA reads.
        tower.load_model(dtype=dtype)
        tower.to(device)
        tower_from_checkpoint = bool(config.extra.get("unfreeze_mm_vision_tower"))
    else:
        from llava.model.multimodal_encoder.builder import build_vision_tower

        # Built off the meta device so that CLIP's non-persistent buffers (position ids) are real tensors.
        tower = model.model.vision_tower = build_vision_tower(config).to(device=device, dtype=dtype)
        tower.image_processor = load_image_processor(path)
        tower.is_loaded = True
        tower_from_checkpoint = True
    report = load_weights(model, files, config.checkpoint_format, device, dtype, tower_from_checkpoint)
    if config.tie_word_embeddings and "lm_head.weight" not in report.loaded:
        model.lm_head.weight = model.model.embed_tokens.weight
        report.loaded["lm_head.weight"] = "(tied to model.embed_tokens.weight)"
    # Every parameter from the checkpoint; for LLaVA-format ones the tower's came from its own checkpoint.
    expected = [n for n, _ in model.named_parameters()
                if config.checkpoint_format == "hf" or not n.startswith(TOWER)]
    check_complete(model, report, path, expected)
    missing = meta_parameters(model)
    if missing:  # cannot happen after check_complete; kept as the last guard against a random-free model
        raise ValueError(f"checkpoint {path} left {len(missing)} parameter(s) unset, e.g. {missing[0]}")
    model.model.rotary_emb.reset_parameters(device)
    model.model.set_attn_implementation(attn_implementation)
    model.eval()
    model.requires_grad_(False)
    if prune is not None:
        model.set_prune(prune)

    tokenizer = load_tokenizer(path)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{config.vocab_size}: the tokenizer files do not belong to these weights"
        )
    context_len = config.max_sequence_length or 2048
    return tokenizer, model, tower.image_processor, context_len


def load_image_processor(path: str):
    """The CLIP image processor of a transformers-format checkpoint: its preprocessor_config.json."""
    from llava.model.multimodal_encoder.clip_encoder import clip_image_processor_class

    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file} is missing: transformers-format checkpoints carry the image preprocessing settings "
            "(copy it from the checkpoint's source, e.g. llava-hf/llava-1.5-7b-hf)"
        )
    read_json(file)
    return clip_image_processor_class().from_pretrained(path)


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def load_tokenizer(path: str):
    """The checkpoint's tokenizer, with LLaVA's SentencePiece behaviour for Llama tokenizers.

    AutoTokenizer would resolve through config.json's `model_type` ("llava"), which on recent transformers
    gives a generic tokenizer without SentencePiece's leading "▁" on each chunk; name the Llama class instead.
    Without tokenizer.model or tokenizer.json transformers builds an almost empty vocabulary (3 tokens)
    without a word of complaint; that is an error here.
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer in {path!r}: expected tokenizer.model (SentencePiece, LLaVA's format) or tokenizer.json"
        )
    cfg_file = os.path.join(path, "tokenizer_config.json")
    cls_name = read_json(cfg_file).get("tokenizer_class") if os.path.isfile(cfg_file) else None
    try:
        if cls_name in ("LlamaTokenizer", "LlamaTokenizerFast"):
            return LlamaTokenizer.from_pretrained(path)
        return AutoTokenizer.from_pretrained(path, use_fast=False)
    except Exception as err:  # the error from transformers does not say which folder failed
        raise ValueError(f"cannot load the tokenizer in {path!r}: {err}") from err
