"""The training loop: plain PyTorch (AdamW, LLaVA's schedules), DDP under torchrun, DeepSpeed ZeRO when asked for.

What HF's Trainer does for LLaVA and this loop does the same way: AdamW with no weight decay on biases and norms,
an optional learning rate of its own for the projector (``mm_projector_lr``), gradient clipping at
``max_grad_norm``, warm-up then cosine (or linear, constant) decay per optimizer step, the loss of each micro-batch
divided by the accumulation steps, batches dealt to the processes in turn (batch k to rank k mod world size) and
LLaVA's modality-length-grouped order (``--group_by_modality_length``).

Checkpoints (``checkpoint-<step>`` in the output folder, written to a temporary folder and renamed, so a crash
never leaves half of one) hold the trainable weights in LLaVA's layout, the optimizer, the scheduler, every
process's RNG states and the step; the sample order of an epoch is a function of the seed and the epoch, so
resuming replays exactly the batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import torch

from llava.constants import IMAGE_TOKEN_INDEX

PREFIX_CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.json"


# ----------------------------------------------------------------------------------------------------------
# LLaVA's length-grouped order


def split_to_even_chunks(indices: list[int], lengths, num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` (longest first) into ``num_chunks`` chunks of equal size, each to the chunk with the
    least total length so far; a chunk that is full takes no more. When the count does not divide, round-robin."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        target = totals.index(min(totals))
        chunks[target].append(index)
        totals[target] += lengths[index]
        if len(chunks[target]) == per_chunk:
            totals[target] = float("inf")
    return chunks


def get_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None) -> list[int]:
    """A random permutation cut into megabatches of ``world_size * batch_size``; each megabatch sorted longest
    first and split into ``world_size`` chunks of similar total length."""
    indices = torch.randperm(len(lengths), generator=generator)
    mega = world_size * batch_size
    megabatches = [indices[i:i + mega].tolist() for i in range(0, len(lengths), mega)]
    megabatches = [sorted(m, key=lambda i: lengths[i], reverse=True) for m in megabatches]
    return [i for m in megabatches for chunk in split_to_even_chunks(m, lengths, world_size) for i in chunk]


def get_modality_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None) -> list[int]:
    """LLaVA's ``--group_by_modality_length`` order. ``lengths`` are positive for samples with an image and
    negative for text-only ones. Each modality is length-grouped on its own into megabatches of
    ``world_size * batch_size``; the full megabatches of both are shuffled together, and the two last (partial)
    megabatches go last as one, in index order (LLaVA's ``sorted``). A single modality is plain length grouping.

    LLaVA draws the two per-modality permutations from the global RNG; here every random draw comes from
    ``generator``, so that the order is a function of its seed (what exact resuming needs)."""
    if any(n == 0 for n in lengths):
        raise ValueError("every sample needs a non-zero length (LLaVA's rule: words in its conversation)")
    if all(n > 0 for n in lengths) or all(n < 0 for n in lengths):
        return get_length_grouped_indices([abs(n) for n in lengths], batch_size, world_size, generator=generator)
    mm_indices, mm_lengths = zip(*[(i, n) for i, n in enumerate(lengths) if n > 0], strict=True)
    lang_indices, lang_lengths = zip(*[(i, -n) for i, n in enumerate(lengths) if n < 0], strict=True)
    mm_order = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator)]
    lang_order = [lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator)]
    mega = world_size * batch_size
    mm_mega = [mm_order[i:i + mega] for i in range(0, len(mm_order), mega)]
    lang_mega = [lang_order[i:i + mega] for i in range(0, len(lang_order), mega)]
    additional = mm_mega[-1] + lang_mega[-1]
    megabatches = mm_mega[:-1] + lang_mega[:-1]
    order = torch.randperm(len(megabatches), generator=generator)
    megabatches = [megabatches[i] for i in order]
    if additional:
        megabatches.append(sorted(additional))
    return [i for m in megabatches for i in m]


# ----------------------------------------------------------------------------------------------------------
# Schedules (HF's formulas: warm-up from 0, then decay per optimizer step)


SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


def lr_lambda(kind: str, warmup: int, total: int):
    if kind not in SCHEDULERS:
        raise ValueError(f"--lr_scheduler_type {kind!r} is not supported; choose one of {', '.join(SCHEDULERS)}")

    def factor(step: int) -> float:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = float(step - warmup) / float(max(1, total - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    if kind == "constant":
        return lambda step: 1.0
    return factor


# ----------------------------------------------------------------------------------------------------------
# Processes


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """The process's place among torchrun's (or DeepSpeed's launcher's) processes, from their variables."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------------------
# Saving in LLaVA's layout

TOWER_PREFIX = "model.vision_tower.vision_tower."


def checkpoint_key(name: str) -> str:
    """A parameter's key in LLaVA's files: the CLIP tower's with CLIPVisionModel's ``vision_model.`` level, which
    transformers 4 (official LLaVA) needs and transformers 5 strips on load."""
    if name.startswith(TOWER_PREFIX) and not name.startswith(TOWER_PREFIX + "vision_model."):
        return TOWER_PREFIX + "vision_model." + name[len(TOWER_PREFIX):]
    return name


def mm_projector_state(model) -> dict[str, torch.Tensor]:
    """What LLaVA's stage 1 saves as mm_projector.bin: the projector's parameters under their full names
    (``model.mm_projector.0.weight``, ...), on the CPU."""
    return {k: t.detach().cpu().clone() for k, t in model.named_parameters() if "mm_projector" in k}


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def save_config(model, out_dir: str) -> None:
    cfg = model.config
    cfg.extra["architectures"] = ["LlavaLlamaForCausalLM"]
    cfg.extra["model_type"] = "llava_llama"
    cfg.extra["torch_dtype"] = str(model.dtype).replace("torch.", "")
    write_json(os.path.join(out_dir, "config.json"), cfg.to_dict())


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")


def save_tokenizer(source_dir: str, out_dir: str, model_max_length: int) -> None:
    """The base model's tokenizer files, unchanged but for what LLaVA's saved tokenizer says: the length, right
    padding and ``<unk>`` as the pad token."""
    for name in TOKENIZER_FILES:
        src = os.path.join(source_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(out_dir, name))
    cfg_file = os.path.join(out_dir, "tokenizer_config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg.update(model_max_length=model_max_length, padding_side="right", pad_token="<unk>")
        write_json(cfg_file, cfg)


def full_state(model, with_tower: bool) -> dict[str, torch.Tensor]:
    """Every weight under LLaVA's names; the CLIP tower only when it was trained (LLaVA's loader reads the tower
    from its own checkpoint otherwise)."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("model.vision_tower.") and not with_tower:
            continue
        if "rotary_emb" in name:
            continue
        out[checkpoint_key(name)] = t.detach().cpu().contiguous()
    return out


def save_full_model(model, out_dir: str, tokenizer_dir: str, model_max_length: int, state=None) -> None:
    """A checkpoint that ``load_pretrained_model`` (and official LLaVA) loads: config.json, model.safetensors and
    the tokenizer files."""
    from safetensors.torch import save_file

    save_config(model, out_dir)
    with_tower = bool(model.config.extra.get("unfreeze_mm_vision_tower"))
    state = state if state is not None else full_state(model, with_tower)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(tokenizer_dir, out_dir, model_max_length)


def load_trainable(model, ckpt_dir: str, adapter_only: bool) -> None:
    """Put a checkpoint's trained weights back into ``model`` (resuming)."""
    if adapter_only:
        file = os.path.join(ckpt_dir, "mm_projector.bin")
        state = torch.load(file, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        file = os.path.join(ckpt_dir, "model.safetensors")
        state = load_file(file)
    params = dict(model.named_parameters())
    wanted = [n for n, p in params.items() if p.requires_grad]
    missing = [n for n in wanted if checkpoint_key(n) not in state]
    if missing:
        raise ValueError(f"{file} lacks {len(missing)} trained weight(s), e.g. {missing[0]}: it is not a checkpoint "
                         "of this run")
    with torch.no_grad():
        for n in wanted:
            t = state[checkpoint_key(n)]
            if t.shape != params[n].shape:
                raise ValueError(f"{file}: {n} has shape {tuple(t.shape)}, the model's is {tuple(params[n].shape)}")
            params[n].copy_(t)


def _rng_state() -> dict:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint(output_dir: str) -> str | None:
    """The complete ``checkpoint-<step>`` with the highest step in ``output_dir`` (HF Trainer's rule)."""
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        head, _, tail = name.partition("-")
        path = os.path.join(output_dir, name)
        if head == PREFIX_CHECKPOINT_DIR and tail.isdigit() and os.path.isfile(os.path.join(path, STATE_FILE)):
            steps.append((int(tail), path))
    return max(steps)[1] if steps else None


# ----------------------------------------------------------------------------------------------------------
# The trainer


class LLaVATrainer:
    """Trains ``model`` on ``train_dataset`` with the options of ``args`` (train.py's TrainingArguments)."""

    def __init__(self, model, tokenizer, args, train_dataset, data_collator, tokenizer_dir: str, env=None):
        self.model = model
        self.tokenizer = tokenizer
        self.args = args
        self.dataset = train_dataset
        self.collator = data_collator
        self.tokenizer_dir = tokenizer_dir
        self.env = env or dist_env()
        self.device = model.device
        self.adapter_only = bool(args.tune_mm_mlp_adapter)
        self.engine = None  # DeepSpeed's, when --deepspeed
        w, bs, ga = self.env.world_size, args.per_device_train_batch_size, args.gradient_accumulation_steps
        if bs < 1 or ga < 1:
            raise ValueError("--per_device_train_batch_size and --gradient_accumulation_steps must be >= 1")
        n_batches = -(-len(train_dataset) // bs)
        self.batches_per_rank = -(-n_batches // w)
        self.steps_per_epoch = -(-self.batches_per_rank // ga)
        if args.max_steps and args.max_steps > 0:
            self.total_steps = int(args.max_steps)
        else:
            if args.num_train_epochs <= 0:
                raise ValueError("--num_train_epochs must be > 0 (or set --max_steps)")
            self.total_steps = max(1, math.ceil(args.num_train_epochs * self.steps_per_epoch))
        self.warmup_steps = (int(args.warmup_steps) if args.warmup_steps > 0
                             else math.ceil(self.total_steps * args.warmup_ratio))
        tower = model.get_vision_tower()
        self.image_tokens = 0
        if tower is not None:
            self.image_tokens = tower.num_patches + (1 if tower.select_feature == "cls_patch" else 0)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=args.learning_rate,
                                           betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                           weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(args.lr_scheduler_type, self.warmup_steps, self.total_steps))
        self.forward_model = model
        if args.deepspeed:
            self._init_deepspeed()
        elif w > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Text-only batches leave the projector without a gradient: DDP must look for unused parameters.
            self.forward_model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        self.global_step = 0
        self.log_history: list[dict] = []
        self._warned_empty = False

    # -- set-up -------------------------------------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        """AdamW's groups as LLaVA's trainer makes them: weight decay except on biases and norm weights; the
        projector at ``mm_projector_lr`` when that is set."""
        from llava.model.language_model.modeling_llama import LlamaRMSNorm

        no_decay = set()
        for mod_name, mod in self.model.named_modules():
            if isinstance(mod, (torch.nn.LayerNorm, LlamaRMSNorm)):
                no_decay.update(f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters(recurse=False))
        groups: dict[tuple, list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            decay = name not in no_decay and "bias" not in name
            projector = self.args.mm_projector_lr is not None and "mm_projector" in name
            groups.setdefault((decay, projector), []).append(p)
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen (check --tune_mm_mlp_adapter, "
                             "--freeze_backbone, --freeze_mm_mlp_adapter)")
        out = []
        for (decay, projector), params in groups.items():
            group = {"params": params, "weight_decay": self.args.weight_decay if decay else 0.0}
            if projector:
                group["lr"] = self.args.mm_projector_lr
            out.append(group)
        return out

    def _init_deepspeed(self) -> None:
        import deepspeed

        cfg = resolve_deepspeed_config(self.args, self.model.config.hidden_size, self.env.world_size)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=cfg,
            model_parameters=None)
        self.forward_model = self.engine
        self.zero_stage = int(cfg.get("zero_optimization", {}).get("stage", 0))

    # -- the sample order ------------------------------------------------------------------------------------

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This process's micro-batches of ``epoch``: a function of the seed and the epoch only."""
        a, w = self.args, self.env.world_size
        bs = a.per_device_train_batch_size
        g = torch.Generator().manual_seed(int(a.seed) + epoch)
        if a.group_by_modality_length:
            order = get_modality_length_grouped_indices(self.dataset.modality_lengths, bs,
                                                        w * a.gradient_accumulation_steps, generator=g)
        else:
            order = torch.randperm(len(self.dataset), generator=g).tolist()
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        # As accelerate does for even batches: the first batches again until every process has as many.
        extra = 0
        while len(batches) % w:
            batches.append(batches[extra])
            extra += 1
        return batches[self.env.rank::w]

    # -- the loop --------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.args.bf16 and self.engine is None:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def _micro_step(self, batch: dict, scale: float, sync: bool) -> tuple[float, int]:
        ids = batch["input_ids"].to(self.device)
        kwargs = dict(input_ids=ids, attention_mask=batch["attention_mask"].to(self.device),
                      labels=batch["labels"].to(self.device))
        if "images" in batch:
            images = batch["images"]
            dtype = torch.bfloat16 if (self.engine is not None and self.args.bf16) else torch.float32
            kwargs["images"] = (images.to(self.device, dtype) if torch.is_tensor(images)
                                else [im.to(self.device, dtype) for im in images])
        import contextlib

        no_sync = (self.forward_model.no_sync() if (not sync and self.engine is None and self.forward_model
                                                    is not self.model) else contextlib.nullcontext())
        with no_sync:
            with self._autocast():
                out = self.forward_model(**kwargs)
            loss = out.loss
            if not bool(torch.isfinite(loss.detach())):
                if not bool(torch.isfinite(out.logits.detach()).all()):
                    raise FloatingPointError(f"the loss is {float(loss.detach())} at step {self.global_step + 1}; "
                                             "lower --learning_rate")
                # Finite logits, no loss: every label of the batch is masked (a tokenization mismatch, or the
                # answers cut off by model_max_length); nothing to learn from it.
                if not self._warned_empty:
                    print(f"WARNING: a batch at step {self.global_step + 1} has no supervised token (masked, or cut "
                          "by --model_max_length); it adds nothing", file=sys.stderr)
                    self._warned_empty = True
                loss = out.logits.sum() * 0.0
            if self.engine is not None:
                # DeepSpeed steps its optimizer and scheduler itself at the accumulation boundary, set here.
                self.engine.set_gradient_accumulation_boundary(sync)
                self.engine.backward(loss)
                self.engine.step()
            else:
                (loss * scale).backward()
        markers = int((ids == IMAGE_TOKEN_INDEX).sum())
        tokens = int(batch["attention_mask"].sum()) + markers * (self.image_tokens - 1)
        return float(loss.detach()), tokens

    def _optimizer_step(self) -> float:
        if self.engine is not None:
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = float("nan")
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _reduce_mean(self, values: list[float]) -> list[float]:
        if self.env.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return (t / self.env.world_size).tolist()

    def train(self, resume_from: str | None = None, stop_at: int | None = None) -> dict:
        """Run to ``total_steps``; from ``resume_from`` (a checkpoint folder) when given. Returns the last log.
        ``stop_at``: leave after that step without the final save, as an interrupted run does."""
        from tqdm import tqdm

        a = self.args
        if resume_from:
            self._load_checkpoint(resume_from)
        os.makedirs(a.output_dir, exist_ok=True)
        log_path = os.path.join(a.output_dir, LOG_FILE)
        if self.env.is_main and resume_from and os.path.isfile(log_path):
            # Steps an interrupted run logged after its last checkpoint are redone: their lines go.
            with open(log_path, encoding="utf-8") as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= self.global_step]
            with open(log_path + ".tmp", "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(log_path + ".tmp", log_path)
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", unit="step",
                   disable=not self.env.is_main, dynamic_ncols=True)
        ga = a.gradient_accumulation_steps
        self.model.train()
        last: dict = {}
        start = time.perf_counter()
        while self.global_step < self.total_steps:
            epoch, pos = divmod(self.global_step, self.steps_per_epoch)
            batches = self.rank_batches(epoch)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches[pos * ga:],
                                                 collate_fn=self.collator, num_workers=a.dataloader_num_workers)
            it = iter(loader)
            for local in range(pos, self.steps_per_epoch):
                if self.global_step >= self.total_steps:
                    break
                n_micro = min(ga, len(batches) - local * ga)  # the epoch's last step may have fewer
                t0 = time.perf_counter()
                lr = self.scheduler.get_last_lr()[0]
                losses, tokens = [], 0
                for m in range(n_micro):
                    loss, n_tok = self._micro_step(next(it), 1.0 / n_micro, sync=m == n_micro - 1)
                    losses.append(loss)
                    tokens += n_tok
                norm = self._optimizer_step()
                self.global_step += 1
                dt = time.perf_counter() - t0
                mean_loss, tokens_all = self._reduce_mean([sum(losses) / len(losses), float(tokens)])
                tokens_all *= self.env.world_size
                record = {"step": self.global_step, "epoch": round(self.global_step / self.steps_per_epoch, 4),
                          "loss": mean_loss, "learning_rate": lr, "grad_norm": norm,
                          "tokens_per_s": tokens_all / dt if dt > 0 else None,
                          "elapsed_s": round(time.perf_counter() - start, 3)}
                last = record
                if self.env.is_main and (self.global_step % max(1, a.logging_steps) == 0
                                         or self.global_step == self.total_steps):
                    self.log_history.append(record)
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.update(1)
                if self._should_save():
                    self.save_checkpoint()
                if stop_at is not None and self.global_step >= stop_at:
                    bar.close()
                    return last
        bar.close()
        self.save_final()
        return last

    def _should_save(self) -> bool:
        a = self.args
        if a.save_strategy == "steps":
            return a.save_steps > 0 and self.global_step % a.save_steps == 0 and self.global_step < self.total_steps
        if a.save_strategy == "epoch":
            return self.global_step % self.steps_per_epoch == 0 and self.global_step < self.total_steps
        return False

    # -- checkpoints -------------------------------------------------------------------------------------------

    def _trainer_state(self) -> dict:
        a = self.args
        return {"global_step": self.global_step, "epoch": self.global_step / self.steps_per_epoch,
                "total_steps": self.total_steps, "world_size": self.env.world_size,
                "per_device_train_batch_size": a.per_device_train_batch_size,
                "gradient_accumulation_steps": a.gradient_accumulation_steps, "seed": a.seed,
                "num_samples": len(self.dataset), "group_by_modality_length": bool(a.group_by_modality_length),
                "tune_mm_mlp_adapter": self.adapter_only, "log_history": self.log_history[-1000:]}

    def _save_weights(self, out_dir: str) -> None:
        """Stage 1: config.json and mm_projector.bin (LLaVA's); otherwise the full model."""
        state = None
        if self.engine is not None and getattr(self, "zero_stage", 0) == 3:
            state = self._gathered_state()
        if not self.env.is_main:
            return
        if self.adapter_only:
            save_config(self.model, out_dir)
            proj = mm_projector_state(self.model) if state is None else {
                k: v for k, v in state.items() if "mm_projector" in k}
            torch.save(proj, os.path.join(out_dir, "mm_projector.bin"))
        else:
            if state is not None:
                with_tower = bool(self.model.config.extra.get("unfreeze_mm_vision_tower"))
                state = {checkpoint_key(k): v.contiguous() for k, v in state.items()
                         if "rotary_emb" not in k and (with_tower or not k.startswith("model.vision_tower."))}
            save_full_model(self.model, out_dir, self.tokenizer_dir, self.tokenizer.model_max_length, state)

    def _gathered_state(self) -> dict:
        import deepspeed

        out = {}
        for name, p in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                out[name] = p.detach().cpu().clone()
        return out

    def save_checkpoint(self) -> str:
        a, env = self.args, self.env
        final = os.path.join(a.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.global_step}")
        tmp = os.path.join(a.output_dir, f".{PREFIX_CHECKPOINT_DIR}-{self.global_step}.tmp")
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier(env)
        self._save_weights(tmp)
        if self.engine is not None:
            self.engine.save_checkpoint(tmp, tag="deepspeed")
        elif env.is_main:
            torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            torch.save(self.scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        rng_name = "rng_state.pth" if env.world_size == 1 else f"rng_state_{env.rank}.pth"
        torch.save(_rng_state(), os.path.join(tmp, rng_name))
        _barrier(env)
        if env.is_main:
            write_json(os.path.join(tmp, STATE_FILE), self._trainer_state())
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate_checkpoints()
        _barrier(env)
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit or limit < 1:
            return
        found = []
        for name in os.listdir(self.args.output_dir):
            head, _, tail = name.partition("-")
            if head == PREFIX_CHECKPOINT_DIR and tail.isdigit():
                found.append((int(tail), os.path.join(self.args.output_dir, name)))
        for _, path in sorted(found)[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def _load_checkpoint(self, ckpt: str) -> None:
        from llava.model.checkpoint import read_json

        state = read_json(os.path.join(ckpt, STATE_FILE))
        mine = self._trainer_state()
        for key in ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                    "num_samples", "group_by_modality_length", "tune_mm_mlp_adapter", "total_steps"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume from {ckpt}: it was written with {key}={state.get(key)!r}, this run "
                                 f"has {mine[key]!r}; resume with the same settings or use another --output_dir")
        if self.engine is not None:
            self.engine.load_checkpoint(ckpt, tag="deepspeed")
        else:
            load_trainable(self.model, ckpt, self.adapter_only)
            self.optimizer.load_state_dict(torch.load(os.path.join(ckpt, "optimizer.pt"), map_location=self.device,
                                                      weights_only=False))
            self.scheduler.load_state_dict(torch.load(os.path.join(ckpt, "scheduler.pt"), weights_only=False))
        rng_name = "rng_state.pth" if self.env.world_size == 1 else f"rng_state_{self.env.rank}.pth"
        _set_rng_state(torch.load(os.path.join(ckpt, rng_name), weights_only=False))
        self.global_step = int(state["global_step"])
        self.log_history = list(state.get("log_history", []))
        if self.env.is_main:
            print(f"resuming from {ckpt} at step {self.global_step} of {self.total_steps}")

    def save_final(self) -> None:
        a = self.args
        if self.env.is_main:
            os.makedirs(a.output_dir, exist_ok=True)
        _barrier(self.env)
        self._save_weights(a.output_dir)
        if self.env.is_main:
            write_json(os.path.join(a.output_dir, STATE_FILE), self._trainer_state())
        _barrier(self.env)


def resolve_deepspeed_config(args, hidden_size: int, world_size: int) -> dict:
    """The DeepSpeed JSON with HF Trainer's meaning of ``"auto"`` filled in from the flags."""
    from llava.model.checkpoint import read_json

    cfg = read_json(args.deepspeed) if isinstance(args.deepspeed, str) else dict(args.deepspeed)
    bs, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
    fills = {"train_micro_batch_size_per_gpu": bs, "gradient_accumulation_steps": ga,
             "train_batch_size": bs * ga * world_size, "gradient_clipping": args.max_grad_norm}
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    for half, on in (("fp16", False), ("bf16", bool(args.bf16))):
        if isinstance(cfg.get(half), dict) and cfg[half].get("enabled") == "auto":
            cfg[half]["enabled"] = on
    zero = cfg.get("zero_optimization", {})
    sizes = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    cfg["zero_optimization"] = zero
    cfg.setdefault("steps_per_print", 10 ** 9)
    return cfg
