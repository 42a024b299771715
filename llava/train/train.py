"""LLaVA-1.5's training entry point, with LLaVA's flag names: projector pre-training and instruction tuning.

    python -m llava.train.train --model_name_or_path LLAMA --version plain --data_path blip_laion_cc_sbu_558k.json \\
        --image_folder IMAGES --vision_tower CLIP --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True \\
        --mm_vision_select_layer -2 --output_dir checkpoints/pretrain ...          # stage 1: mm_projector.bin
    python -m llava.train.train --model_name_or_path LLAMA --version v1 --data_path llava_v1_5_mix665k.json \\
        --pretrain_mm_mlp_adapter checkpoints/pretrain/mm_projector.bin ...       # stage 2: a full checkpoint

Several processes: ``torchrun --nproc_per_node N -m llava.train.train ...``; DeepSpeed ZeRO with
``--deepspeed scripts/zero2.json`` (or zero3.json) when it is installed (``pip install -e '.[train]'``).
A run resumes from the last ``checkpoint-<step>`` in ``--output_dir`` by itself (or from
``--resume_from_checkpoint DIR``). Flags LLaVA's scripts pass that do not apply here are accepted with a note
or refused, each by name (docs/Training.md lists them).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

# Flags LLaVA's scripts pass that change nothing here: accepted, with this note printed when set.
IGNORED = {
    "per_device_eval_batch_size": "there is no evaluation during training",
    "lazy_preprocess": "samples are always tokenized when they are fetched",
    "report_to": "the loss, learning rate and throughput go to train_log.jsonl in --output_dir and the progress bar",
    "cache_dir": "models are read from --model_name_or_path (a folder or the hub cache)",
    "remove_unused_columns": "the collator builds the batches itself",
    "mpt_attn_impl": "only Llama language models are supported",
    "is_multimodal": "a model with a vision tower is always multimodal",
    "lora_r": "LoRA is not supported", "lora_alpha": "LoRA is not supported",
    "lora_dropout": "LoRA is not supported", "lora_weight_path": "LoRA is not supported",
    "lora_bias": "LoRA is not supported", "double_quant": "quantized training is not supported",
    "quant_type": "quantized training is not supported", "run_name": "there is no experiment tracker",
    "local_rank": "the process's rank is read from torchrun's environment",
    "ddp_find_unused_parameters": "DDP always looks for unused parameters (text-only batches skip the projector)",
}


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m llava.train.train", description=__doc__.split("\n\n")[0],
                                 allow_abbrev=False)

    def flag(name, **kw):
        if kw.get("type") is _bool:
            kw.setdefault("nargs", "?")
            kw.setdefault("const", True)
            kw.setdefault("default", False)
        ap.add_argument("--" + name, **kw)

    # ModelArguments
    flag("model_name_or_path", required=True, help="a Llama folder (stage 1) or a LLaVA-format checkpoint")
    flag("version", default="v0", help="conversation template: plain (stage 1) or v1 (stage 2)")
    flag("freeze_backbone", type=_bool)
    flag("tune_mm_mlp_adapter", type=_bool, help="stage 1: train only the projector, save mm_projector.bin")
    flag("vision_tower", default=None)
    flag("unfreeze_mm_vision_tower", type=_bool, help="train the CLIP tower too (saved in the checkpoint)")
    flag("mm_vision_select_layer", type=int, default=-1)
    flag("pretrain_mm_mlp_adapter", default=None, help="a stage-1 mm_projector.bin to start the projector from")
    flag("mm_projector_type", default="linear")
    flag("mm_use_im_start_end", type=_bool)
    flag("mm_use_im_patch_token", type=_bool)
    flag("mm_patch_merge_type", default="flat")
    flag("mm_vision_select_feature", default="patch")
    # DataArguments
    flag("data_path", required=True)
    flag("lazy_preprocess", type=_bool)
    flag("is_multimodal", type=_bool)
    flag("image_folder", default=None)
    flag("image_aspect_ratio", default="square", help="square (CLIP's resize and crop) or pad (LLaVA-1.5)")
    flag("image_grid_pinpoints", default=None)
    # TrainingArguments (HF Trainer's names and defaults, LLaVA's additions)
    flag("output_dir", required=True)
    flag("num_train_epochs", type=float, default=3.0)
    flag("max_steps", type=int, default=-1)
    flag("per_device_train_batch_size", type=int, default=8)
    flag("per_device_eval_batch_size", type=int, default=8)
    flag("gradient_accumulation_steps", type=int, default=1)
    flag("learning_rate", type=float, default=5e-5)
    flag("mm_projector_lr", type=float, default=None)
    flag("weight_decay", type=float, default=0.0)
    flag("adam_beta1", type=float, default=0.9)
    flag("adam_beta2", type=float, default=0.999)
    flag("adam_epsilon", type=float, default=1e-8)
    flag("max_grad_norm", type=float, default=1.0)
    flag("lr_scheduler_type", default="linear")
    flag("warmup_ratio", type=float, default=0.0)
    flag("warmup_steps", type=int, default=0)
    flag("optim", default="adamw_torch")
    flag("model_max_length", type=int, default=512)
    flag("group_by_modality_length", type=_bool)
    flag("gradient_checkpointing", type=_bool)
    flag("bf16", type=_bool)
    flag("fp16", type=_bool)
    flag("tf32", type=_bool, default=None)
    flag("seed", type=int, default=42)
    flag("logging_steps", type=float, default=500)
    flag("save_strategy", default="steps", choices=["steps", "epoch", "no"])
    flag("save_steps", type=float, default=500)
    flag("save_total_limit", type=int, default=None)
    flag("evaluation_strategy", default="no")
    flag("eval_strategy", default="no")
    flag("dataloader_num_workers", type=int, default=0)
    flag("report_to", default="none")
    flag("resume_from_checkpoint", default=None, help="a checkpoint-<step> folder (default: the last in --output_dir)")
    flag("deepspeed", default=None, help="a DeepSpeed JSON (scripts/zero2.json, scripts/zero3.json)")
    flag("use_cpu", type=_bool, help="train on the CPU even when a GPU is visible")
    flag("freeze_mm_mlp_adapter", type=_bool)
    flag("freeze_vision_tower", type=_bool, default=None)
    flag("attn_implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    flag("lora_enable", type=_bool)
    flag("bits", type=int, default=16)
    for name in ("cache_dir", "mpt_attn_impl", "lora_weight_path", "lora_bias", "quant_type", "run_name"):
        flag(name, default=None)
    for name in ("remove_unused_columns", "double_quant", "ddp_find_unused_parameters"):
        flag(name, type=_bool, default=None)
    for name in ("lora_r", "lora_alpha", "local_rank"):
        flag(name, type=int, default=None)
    flag("lora_dropout", type=float, default=None)
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    pruning = [a.split("=")[0] for a in argv if a.startswith(("--prune", "--entropy-variant", "--entropy_variant"))]
    if pruning:
        raise NotImplementedError(f"{pruning[0]}: training with visual-token pruning on is not supported (the labels "
                                  "of pruned positions have no logits); train unpruned, then prune at inference")
    args = build_parser().parse_args(argv)
    check_args(args, argv)
    return args


def check_args(args, argv: list[str]) -> None:
    """Refuse what is not supported, by flag; print a note for what is accepted but changes nothing."""
    refused = [
        (args.lora_enable, "--lora_enable: LoRA training is not supported; train the full model"),
        (args.bits != 16, f"--bits {args.bits}: quantized (4/8-bit) training is not supported"),
        (args.fp16, "--fp16: float16 training (loss scaling) is not supported; use --bf16 True"),
        (args.mm_use_im_start_end, "--mm_use_im_start_end True is not supported (LLaVA-1.5 trains with False)"),
        (args.image_aspect_ratio not in ("square", "pad"),
         f"--image_aspect_ratio {args.image_aspect_ratio!r}: only square and pad (LLaVA-1.5) are supported"),
        (args.image_grid_pinpoints is not None, "--image_grid_pinpoints: anyres (LLaVA-1.6) is not supported"),
        (args.mm_patch_merge_type != "flat", f"--mm_patch_merge_type {args.mm_patch_merge_type!r}: only flat"),
        (args.optim not in ("adamw_torch", "adamw_torch_fused"),
         f"--optim {args.optim!r}: only adamw_torch (PyTorch's AdamW) is supported"),
        (args.evaluation_strategy != "no" or args.eval_strategy != "no",
         "--evaluation_strategy: evaluation during training is not supported; use 'no' and the eval scripts"),
        (args.freeze_vision_tower is not None, "--freeze_vision_tower is not a LLaVA-1.5 flag; the tower is frozen "
         "unless --unfreeze_mm_vision_tower True"),
        (args.per_device_train_batch_size < 1, "--per_device_train_batch_size must be >= 1"),
        (args.gradient_accumulation_steps < 1, "--gradient_accumulation_steps must be >= 1"),
        (args.model_max_length < 2, "--model_max_length must be >= 2"),
        (args.learning_rate <= 0, "--learning_rate must be > 0"),
        (not 0 <= args.warmup_ratio <= 1, "--warmup_ratio must be in [0, 1]"),
        (args.dataloader_num_workers < 0, "--dataloader_num_workers must be >= 0"),
    ]
    for bad, message in refused:
        if bad:
            raise ValueError(message)
    from llava.train.llava_trainer import SCHEDULERS

    if args.lr_scheduler_type not in SCHEDULERS:
        raise ValueError(f"--lr_scheduler_type {args.lr_scheduler_type!r} is not supported; choose one of "
                         f"{', '.join(SCHEDULERS)}")
    if args.deepspeed is not None and not os.path.isfile(args.deepspeed):
        raise FileNotFoundError(f"--deepspeed {args.deepspeed!r}: no such file (LLaVA's are scripts/zero2.json, "
                                "scripts/zero3.json)")
    if args.deepspeed is not None:
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise NotImplementedError(f"--deepspeed needs DeepSpeed, which is not installed ({err}); "
                                      "pip install -e '.[train]', or leave --deepspeed out") from err
    # HF's fractional logging/save steps (a fraction of the run) are not supported: whole steps only.
    for name in ("logging_steps", "save_steps"):
        value = getattr(args, name)
        if value != int(value) or value < 0:
            raise ValueError(f"--{name} {value}: give a whole number of steps")
        setattr(args, name, int(value))
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    notes = [f"--{name}: ignored ({why})" for name, why in IGNORED.items()
             if name in given and name not in ("report_to",)]
    if "report_to" in given and str(args.report_to).lower() not in ("none", ""):
        notes.append(f"--report_to {args.report_to}: ignored ({IGNORED['report_to']})")
    if args.mm_use_im_patch_token:
        notes.append("--mm_use_im_patch_token True: ignored (LLaVA-1.5's prompts never use <im_patch>; the vocabulary "
                     "is not grown)")
    if args.tf32 and not torch.cuda.is_available():
        notes.append("--tf32: ignored (TensorFloat-32 is a CUDA matmul mode)")
    if int(os.environ.get("RANK", 0)) == 0:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# The model


def _refuse_pruning_config(raw: dict, cfg_path: str) -> None:
    keys = sorted(k for k in raw if k.lower().startswith(("prune", "entropyprune")) and raw[k] not in (None, False))
    if keys:
        raise NotImplementedError(f"{cfg_path} turns visual-token pruning on ({', '.join(keys)}); training with "
                                  "pruning is not supported: remove those keys to train unpruned")


def load_base_config(path: str):
    """The starting model's config: a Llama folder (transformers' layout) or a LLaVA-format checkpoint."""
    from llava.model.checkpoint import read_json
    from llava.model.language_model.configuration_llava import LlavaConfig

    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no config.json in --model_name_or_path {path!r}")
    raw = read_json(cfg_path)
    if "text_config" in raw:
        raise NotImplementedError(f"{cfg_path} is a transformers-format LLaVA (LlavaForConditionalGeneration); train "
                                  "from a Llama folder or a LLaVA-format checkpoint")
    model_type = raw.get("model_type")
    if model_type not in (None, "llama", "llava", "llava_llama"):
        raise NotImplementedError(f"{cfg_path}: model_type {model_type!r} is not supported; training starts from a "
                                  "Llama language model (model_type llama) or a LLaVA-1.5 checkpoint")
    _refuse_pruning_config(raw, cfg_path)
    try:
        return LlavaConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: {err}") from err


def load_adapter(model, file: str) -> None:
    """LLaVA's ``--pretrain_mm_mlp_adapter``: the projector's weights from a stage-1 mm_projector.bin, matched by
    the name after ``mm_projector.``; every weight must fit."""
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--pretrain_mm_mlp_adapter {file!r}: no such file")
    try:
        weights = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read --pretrain_mm_mlp_adapter {file}: {type(err).__name__}: {err}") from err
    if not isinstance(weights, dict):
        raise ValueError(f"{file} does not hold a state dict (LLaVA's mm_projector.bin does)")
    state = {k.split("mm_projector.")[1]: v for k, v in weights.items() if "mm_projector" in k}
    projector = model.get_model().mm_projector
    try:
        projector.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"--pretrain_mm_mlp_adapter {file} does not fit --mm_projector_type "
                         f"{model.config.mm_projector_type}: {' '.join(str(err).split())}") from err


def build_model(args, device: torch.device):
    """LLaVA's set-up before training: the language model, the CLIP tower (its own pretrained weights) and the
    projector (from the checkpoint when it has one, else new, seeded), configured from the flags."""
    from llava.model.builder import load_tokenizer, resolve_model_path, resolve_vision_tower
    from llava.model.checkpoint import load_weights, weight_files
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_projector.builder import build_vision_projector

    path = resolve_model_path(args.model_name_or_path)
    config = load_base_config(path)
    tower_name = args.vision_tower or config.mm_vision_tower
    if not tower_name:
        raise ValueError(f"{path} has no vision tower: pass --vision_tower (LLaVA-1.5's is "
                         "openai/clip-vit-large-patch14-336)")
    tower_path = resolve_vision_tower(tower_name, path, from_config=args.vision_tower is None)
    old_projector = (config.mm_projector_type, config.mm_hidden_size) if config.mm_vision_tower else None
    # What LLaVA's initialize_vision_modules and train() write into the config.
    config.mm_vision_tower = args.vision_tower or os.path.abspath(tower_path)
    config.mm_projector_type = args.mm_projector_type
    config.mm_vision_select_layer = args.mm_vision_select_layer
    config.mm_vision_select_feature = args.mm_vision_select_feature
    config.image_aspect_ratio = args.image_aspect_ratio
    config.tokenizer_padding_side = "right"
    config.tokenizer_model_max_length = args.model_max_length
    config.mm_use_im_start_end = args.mm_use_im_start_end
    config.mm_use_im_patch_token = args.mm_use_im_patch_token
    from transformers import CLIPVisionConfig

    config.mm_hidden_size = CLIPVisionConfig.from_pretrained(tower_path, local_files_only=True).hidden_size
    if old_projector and old_projector != (config.mm_projector_type, config.mm_hidden_size):
        raise ValueError(f"{path} holds a {old_projector[0]} projector for {old_projector[1]}-wide features; this run "
                         f"asks for {config.mm_projector_type} on {config.mm_hidden_size}: match --mm_projector_type "
                         "or start from the Llama folder")
    # A LLaVA checkpoint trained with its tower unfrozen holds that tower (LLaVA's loader reads it from there).
    from_tower = bool(config.extra.get("unfreeze_mm_vision_tower")) and old_projector is not None
    config.extra.update(use_mm_proj=True, tune_mm_mlp_adapter=bool(args.tune_mm_mlp_adapter),
                        freeze_mm_mlp_adapter=bool(args.freeze_mm_mlp_adapter), mm_projector_lr=args.mm_projector_lr,
                        mm_patch_merge_type=args.mm_patch_merge_type,
                        unfreeze_mm_vision_tower=bool(args.unfreeze_mm_vision_tower), use_cache=True)
    config.extra.pop("_name_or_path", None)
    config_tower = config.mm_vision_tower
    config.mm_vision_tower = tower_path
    files = weight_files(path)
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config)
    tower = model.get_vision_tower()
    tower.load_model(dtype=torch.float32)
    tower.to(device)
    config.mm_vision_tower = config_tower
    tower.vision_tower_name = config_tower
    report = load_weights(model, files, "llava", device, torch.float32, tower_from_checkpoint=from_tower)
    if report.unused:
        raise ValueError(f"{path}: {len(report.unused)} tensor(s) match no weight of the model, "
                         f"e.g. {report.unused[0]}")
    if config.tie_word_embeddings and "lm_head.weight" not in report.loaded:
        model.lm_head.weight = model.model.embed_tokens.weight
        report.loaded["lm_head.weight"] = "(tied)"
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    projector_meta = [n for n in meta if n.startswith("model.mm_projector.")]
    if projector_meta:
        if len(projector_meta) != len([n for n, _ in model.model.mm_projector.named_parameters()]):
            raise ValueError(f"{path} holds only part of the projector (missing {projector_meta[0]})")
        torch.manual_seed(args.seed)  # a new projector, drawn as HF Trainer draws it after set_seed(seed)
        model.model.mm_projector = build_vision_projector(config).to(device)
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(f"{path} lacks {len(meta)} weight(s) of the language model, e.g. {meta[0]}")
    model.model.rotary_emb.reset_parameters(device)
    model.model.set_attn_implementation(args.attn_implementation)
    if args.pretrain_mm_mlp_adapter:
        load_adapter(model, args.pretrain_mm_mlp_adapter)

    # Which weights train (LLaVA's order: backbone, then the projector, then the tower).
    model.requires_grad_(True)
    model.get_vision_tower().requires_grad_(bool(args.unfreeze_mm_vision_tower))
    if args.freeze_backbone:
        for name, p in model.model.named_parameters():
            if not name.startswith(("mm_projector.", "vision_tower.")):
                p.requires_grad_(False)
    if args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
        model.model.mm_projector.requires_grad_(True)
    if args.freeze_mm_mlp_adapter:
        model.model.mm_projector.requires_grad_(False)
    model.model.gradient_checkpointing = bool(args.gradient_checkpointing)
    model.train()

    tokenizer = load_tokenizer(path)
    tokenizer.model_max_length = args.model_max_length
    tokenizer.padding_side = "right"
    tokenizer.pad_token = tokenizer.unk_token
    return model, tokenizer, path


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_device(args, env) -> torch.device:
    if torch.cuda.is_available() and not args.use_cpu:
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def main(argv=None) -> int:
    train(argv)
    return 0


def train(argv=None, stop_at: int | None = None):
    """Parse the flags, build the model and the data, train; returns the trainer (its model stays in memory).
    ``stop_at``: stop after that many steps, as an interrupted run would (tests of resuming use it)."""
    from llava.train.data import DataArguments, DataCollatorForSupervisedDataset, LazySupervisedDataset
    from llava.train.llava_trainer import LLaVATrainer, dist_env, last_checkpoint

    args = parse_args(argv)
    env = dist_env()
    if args.deepspeed and env.world_size == 1:
        # DeepSpeed always wants a process group; one process without a launcher gets one of its own.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if (env.world_size > 1 or args.deepspeed) and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and not args.use_cpu else "gloo"
        torch.distributed.init_process_group(backend=backend)
    device = pick_device(args, env)
    if device.type == "cuda" and args.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    model, tokenizer, path = build_model(args, device)
    if model.get_model().prune is not None:
        raise NotImplementedError("training with visual-token pruning on is not supported")
    data_args = DataArguments(data_path=args.data_path, image_folder=args.image_folder,
                              image_aspect_ratio=args.image_aspect_ratio, version=args.version,
                              mm_use_im_start_end=args.mm_use_im_start_end,
                              image_processor=model.get_vision_tower().image_processor)
    dataset = LazySupervisedDataset(args.data_path, tokenizer, data_args, model.config)
    tower = model.get_vision_tower()
    if any("image" in s for s in dataset.samples) and args.model_max_length <= tower.num_patches:
        raise ValueError(f"--model_max_length {args.model_max_length} leaves no room for text after an image's "
                         f"{tower.num_patches} tokens; LLaVA-1.5's scripts pass --model_max_length 2048")
    trainer = LLaVATrainer(model, tokenizer, args, dataset, DataCollatorForSupervisedDataset(tokenizer), path, env)
    resume = args.resume_from_checkpoint
    if resume is not None and not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume!r}: no such folder")
    resume = resume or last_checkpoint(args.output_dir)
    last = trainer.train(resume_from=resume, stop_at=stop_at)
    if env.is_main and stop_at is None:
        what = "mm_projector.bin" if args.tune_mm_mlp_adapter else "the model"
        loss = f"; last loss {last['loss']:.4f}" if last else ""
        print(f"trained {trainer.global_step} step(s){loss}; {what} saved in {args.output_dir}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return trainer


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
