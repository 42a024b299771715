"""How fast can a tiny LLaVA learn the synthetic task? A quick training loop for finding a recipe.

    python -m llava.tools.synthetic_probe --data DIR --checkpoint BASE --out OUT \
        --phases "colour_hint:700:all;colour_existence:300:projector;colour_existence,colour_hint:400:all"

DIR is ``make_synthetic_data``'s output and BASE a ``make_tiny_checkpoint --format llama`` folder (its tokenizer
and its CLIP tower are used; the language model is drawn fresh at the sizes given here). This is not LLaVA's
training (``llava.train.train`` is): to try many settings on a CPU it computes each training and test image's
tower features once (cached in OUT), draws new question turns for an image at every step (no question twice
in a conversation), and scores the held-out MME questions by the Yes / No logits of the first answer token
instead of decoding. The model is the project's ``LlavaLlamaForCausalLM`` on those features, with LLaVA v1 labels
(``preprocess_v1``: loss on the answers and their ``</s>`` only).

Phases run one after the other, each ``KINDS:STEPS:TRAINS`` with its own warm-up and cosine schedule: KINDS a
comma-separated list of question kinds (below), TRAINS ``all`` or ``projector`` (LLaVA's stage 1: only the
projector learns). Kinds: the MME subtasks of the held-out set (``existence``, ``count``, ``position``,
``color``, ``OCR``, as make_synthetic_data asks them); ``colour_existence`` ("Is there a red shape in the
image?"); ``colour_hint``, the same question after the scene's colours written in the text ("Colors: red,
blue. Is there ...") and without the image, a text-only control; ``colours`` ("What colors are in the
image?" answered by the sorted list).

OUT/log.jsonl gets one line per evaluation: the step, the CPU seconds of training so far (the process's, so
other jobs on the machine do not count), the mean loss since the last one, and the accuracy (%) per MME
subtask, on ``colour_existence`` (one Yes and, where the scene leaves a colour out, one No question per
existence test image) and on ``colour_hint`` (the same questions with the colours written in, no image).
Chance is 50.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import build_prompt
from llava.mm_utils import tokenizer_image_token
from llava.tools import make_synthetic_data as S

KINDS = (*S.MME_SUBTASKS, "colour_existence", "colour_hint", "colours")


def colour_existence(rng: random.Random, scene, answer: bool) -> tuple[str, bool]:
    present = sorted({obj[1] for obj in scene.objects})
    absent = [c for c in S.COLOURS if c not in present]
    if not answer and not absent:  # every colour is in the scene: only a Yes question exists
        answer = True
    colour = rng.choice(present) if answer else rng.choice(absent)
    return f"Is there a {colour} shape in the image?", answer


def with_hint(rng: random.Random, scene, q: str) -> str:
    """`q` after the scene's colours written out, in a random order: the text-only control."""
    colours = sorted({o[1] for o in scene.objects})
    rng.shuffle(colours)
    return f"Colors: {', '.join(colours)}. {q}"


def question(rng: random.Random, scene, kind: str) -> tuple[str, str, bool]:
    """(question, answer, whether the image is shown) of one turn."""
    if kind == "colours":
        return "What colors are in the image?", ", ".join(sorted({o[1] for o in scene.objects})), True
    want = rng.random() < 0.5
    if kind in S.MME_SUBTASKS:
        return S.yes_no(rng, scene, kind, want), "Yes" if want else "No", True
    q, answer = colour_existence(rng, scene, want)
    if kind == "colour_hint":
        return with_hint(rng, scene, q), "Yes" if answer else "No", False
    return q, "Yes" if answer else "No", True


def conversation(rng: random.Random, scene, kinds: list[str], turns: int) -> tuple[list[dict], bool]:
    out, asked, image = [], set(), True
    for _ in range(10 * turns):
        if len(out) == turns:
            break
        q, a, shown = question(rng, scene, rng.choice(kinds))
        if q in asked:
            continue
        asked.add(q)
        image = image and shown
        out.append((f"{q}\n{S.SHORT}", a))
    conv = []
    for k, (q, a) in enumerate(out):
        conv += [{"from": "human", "value": ("<image>\n" if k == 0 and image else "") + q}, {"from": "gpt", "value": a}]
    return conv, image


def tower_features(tower_dir: str, paths: list[str], cache: str) -> torch.Tensor:
    if os.path.exists(cache):
        return torch.load(cache)
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    tower = CLIPVisionTower(tower_dir, select_layer=-2)
    tower.load_model(dtype=torch.float32)
    out = []
    for i in range(0, len(paths), 64):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + 64]]
        pixels = tower.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out.append(tower(pixels).half())
    feats = torch.cat(out)
    torch.save(feats, cache)
    return feats


def build_model(vocab: int, args, mm_hidden: int):
    from llava.model.language_model.configuration_llava import LlavaConfig
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_projector.builder import build_vision_projector

    cfg = LlavaConfig.from_dict(dict(
        vocab_size=vocab, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", pad_token_id=0,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, model_type="llava_llama",
        mm_hidden_size=mm_hidden, mm_projector_type="mlp2x_gelu", mm_vision_tower=None))
    torch.manual_seed(args.seed)
    model = LlavaLlamaForCausalLM(cfg)
    model.model.mm_projector = build_vision_projector(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, args.qk_std if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.02)
    model.model.rotary_emb.reset_parameters(torch.device("cpu"))
    return model


class Probe:
    def __init__(self, args):
        from llava.model.builder import load_tokenizer
        from llava.tools.make_tiny_checkpoint import TOWER_DIR

        self.args = args
        manifest = json.load(open(os.path.join(args.data, "manifest.json"), encoding="utf-8"))
        if manifest.get("task", "full") != "full":
            raise ValueError(f"{args.data} holds the {manifest['task']!r} task; the probe reads make_synthetic_data's "
                             "full task (--task full)")
        seed, m, n = manifest["seed"], manifest["test"], manifest["train"]
        self.tok = load_tokenizer(args.checkpoint)
        self.tok.pad_token = self.tok.unk_token
        tower = os.path.join(args.checkpoint, TOWER_DIR)
        held = set()
        for split in [f"test-mme-{c}" for c in S.MME_SUBTASKS] + ["test-sqa", "test-textvqa"]:
            held |= {s.signature for s in S._test_scenes(seed, split, m)}
        self.scenes = S.training_scenes(seed, n, held, tuple(manifest.get("train_radius", S.RADIUS)))
        self.train_feats = tower_features(
            tower, [os.path.join(args.data, "train", "images", f"{i:06d}.png") for i in range(n)],
            os.path.join(args.out, "train_features.pt"))
        mme = os.path.join(args.data, "eval", "MME", "MME_Benchmark_release_version")
        self.test_images = [f"{c}/{i:04d}.png" for c in S.MME_SUBTASKS for i in range(m)]
        self.test_feats = tower_features(tower, [os.path.join(mme, p) for p in self.test_images],
                                         os.path.join(args.out, "test_features.pt"))
        self.test_questions = []  # (subtask, image index, question, answer)
        for k, rel in enumerate(self.test_images):
            with open(os.path.join(mme, rel[:-4] + ".txt"), encoding="utf-8") as f:
                for line in f:
                    q, a = line.rstrip("\n").split("\t")
                    self.test_questions.append((rel.split("/")[0], k, q.replace(" " + S.YES_NO, ""), a == "Yes"))
        er = random.Random(seed)
        for i, scene in enumerate(S._test_scenes(seed, "test-mme-existence", m)):
            k = self.test_images.index(f"existence/{i:04d}.png")
            for want in (True, False):
                q, answer = colour_existence(er, scene, want)
                if want or not answer:
                    self.test_questions.append(("colour_existence", k, q, answer))
                    self.test_questions.append(("colour_hint", None, with_hint(er, scene, q), answer))
        self.model = build_model(len(self.tok), args, self.train_feats.shape[-1])
        self.yes = self.tok("Yes", add_special_tokens=False).input_ids[0]
        self.no = self.tok("No", add_special_tokens=False).input_ids[0]

    def embed(self, ids: torch.Tensor, labels: torch.Tensor, feats: torch.Tensor | None):
        emb = self.model.model.embed_tokens
        where = (ids == IMAGE_TOKEN_INDEX).nonzero()
        if feats is None or not len(where):
            return emb(ids), labels
        pos = int(where[0, 0])
        image = self.model.model.mm_projector(feats.float())
        x = torch.cat([emb(ids[:pos]), image, emb(ids[pos + 1:])])
        return x, torch.cat([labels[:pos], torch.full((len(image),), IGNORE_INDEX), labels[pos + 1:]])

    def batch(self, rows):
        xs, ls = zip(*(self.embed(*row) for row in rows), strict=True)
        t = max(len(x) for x in xs)
        x = torch.zeros(len(xs), t, xs[0].shape[-1])
        labels = torch.full((len(xs), t), IGNORE_INDEX)
        mask = torch.zeros(len(xs), t, dtype=torch.bool)
        for j, (xj, lj) in enumerate(zip(xs, ls, strict=True)):
            x[j, :len(xj)], labels[j, :len(lj)], mask[j, :len(xj)] = xj, lj, True
        return x, labels, mask

    def training_row(self, i: int, kinds: list[str], rng: random.Random):
        from llava.train.data import preprocess_v1

        conv, image = conversation(rng, self.scenes[i], kinds, self.args.turns)
        d = preprocess_v1([conv], self.tok, has_image=image, legacy=True)
        return d["input_ids"][0], d["labels"][0], self.train_feats[i] if image else None

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        right: dict[str, list[bool]] = {}
        rows = []
        for sub, k, q, answer in self.test_questions:
            prompt = build_prompt(f"{q}\n{S.SHORT}", "vicuna_v1", n_images=int(k is not None))
            ids = tokenizer_image_token(prompt, self.tok, return_tensors="pt")
            rows.append((sub, answer, (ids, ids.clone(), self.test_feats[k] if k is not None else None)))
        for i in range(0, len(rows), 16):
            chunk = rows[i:i + 16]
            x, _, mask = self.batch([r[2] for r in chunk])
            logits = self.model(inputs_embeds=x, attention_mask=mask).logits
            last = logits[torch.arange(len(chunk)), mask.sum(1) - 1]
            for (sub, answer, _), lg in zip(chunk, last, strict=True):
                right.setdefault(sub, []).append(bool(lg[self.yes] > lg[self.no]) == answer)
        self.model.train()
        return {k: round(100 * sum(v) / len(v), 1) for k, v in right.items()}

    def run(self, phases) -> list[dict]:
        args, model = self.args, self.model
        rng = random.Random(args.seed)
        log, step, losses = [], 0, []
        t0 = time.process_time()
        for kinds, steps, trains in phases:
            model.requires_grad_(trains == "all")
            model.model.mm_projector.requires_grad_(True)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
            warm = max(1, int(0.03 * steps))
            for s in range(steps):
                for g in opt.param_groups:
                    g["lr"] = args.lr * min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))
                rows = [self.training_row(rng.randrange(len(self.scenes)), kinds, rng) for _ in range(args.batch_size)]
                x, labels, mask = self.batch(rows)
                logits = model(inputs_embeds=x, attention_mask=mask).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                       ignore_index=IGNORE_INDEX)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
                losses.append(loss.item())
                if step % args.eval_every == 0 or s + 1 == steps:
                    entry = {"step": step, "phase": ",".join(kinds), "cpu_s": round(time.process_time() - t0, 1),
                             "loss": round(sum(losses) / len(losses), 4), **self.evaluate()}
                    losses = []
                    log.append(entry)
                    with open(os.path.join(args.out, "log.jsonl"), "a", encoding="utf-8") as f:
                        f.write(json.dumps(entry) + "\n")
                    print(json.dumps(entry), flush=True)
        return log


def parse_phases(text: str) -> list[tuple[list[str], int, str]]:
    phases = []
    for part in text.split(";"):
        try:
            kinds, steps, trains = part.split(":")
            steps = int(steps)
        except ValueError:
            raise ValueError(f"--phases: {part!r} is not KINDS:STEPS:TRAINS") from None
        kinds = kinds.split(",")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or steps < 1 or trains not in ("all", "projector"):
            raise ValueError(f"--phases: {part!r}: kinds are {', '.join(KINDS)}; STEPS >= 1; TRAINS all or projector")
        phases.append((kinds, steps, trains))
    return phases


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="make_synthetic_data's output folder")
    ap.add_argument("--checkpoint", required=True, help="make_tiny_checkpoint --format llama folder (tokenizer, tower)")
    ap.add_argument("--out", required=True, help="folder for the feature caches and log.jsonl")
    ap.add_argument("--phases", required=True, help="KINDS:STEPS:all|projector, ';'-separated")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--qk-std", type=float, default=0.15, help="init std of the query and key projections")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--turns", type=int, default=8, help="question turns per conversation")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest on a shared 2-core VM)")
    args = ap.parse_args(argv)
    phases = parse_phases(args.phases)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    return Probe(args).run(phases)


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
