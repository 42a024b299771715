"""Run a benchmark driver (`model_vqa*.py`): flags, model loading, prompts, the answer loop.

Each driver only says how its question file becomes `Item`s (one per answer line) and how an answer line is
keyed (`llava.eval.questions`); this module does the rest, with `llava.eval.shards` (which questions this
process answers: `--num-chunks/--chunk-idx` or torchrun's RANK/WORLD_SIZE) and `llava.eval.answer_file`
(appending, resuming and merging answers, and the settings sidecar).

- LLaVA's flags (`--model-path --question-file --answers-file --conv-mode --num-chunks --chunk-idx
  --temperature --top_p ...`, the spellings with dashes too), the pruning flags and `--device --dtype
  --attn-implementation --vision-tower`.
- Images are decoded and preprocessed in a background thread while the model generates.
- `--batch-size B` questions per model call (default 1, as LLaVA), `--bucket-window W` to batch questions of
  similar prompt length (`llava.eval.batching`). Answers are the same at any batch size and are written in
  question order, each as soon as its batch is done.

    python -m llava.eval.driver merge --output answers/ckpt.jsonl answers/ckpt/2_0.jsonl answers/ckpt/2_1.jsonl
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from datetime import datetime, timezone
from typing import Any

from llava.eval import EvalInputError, write_json
from llava.eval.answer_file import (
    AnswerWriter,
    answered_keys,
    answers_lock,
    check_resumable,
    merge_answers,
    merge_main,
    meta_path,
    pending_items,
    read_answers,
    settings_of,
    utc_now,
)
from llava.eval.flag_types import int_at_least
from llava.eval.questions import Benchmark, Item, answer_stub, default_record, items_of
from llava.eval.shards import (
    Shard,
    clear_failure,
    get_chunk,
    mark_failure,
    resolve_shard,
    shard_path,
    wait_for_shards,
)
from llava.utils import run_cli

# ------------------------------------------------------------------------------------------------ flags


def build_parser(description: str, max_new_tokens: int) -> argparse.ArgumentParser:
    """LLaVA's driver flags (defaults as in LLaVA) plus ours; the drivers add their own on top."""
    from llava.eval.flag_types import add_decoding_args
    from llava.eval.prune_args import add_prune_args

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Required, unlike LLaVA's placeholder defaults (facebook/opt-350m, tables/question.jsonl), which only fail later.
    ap.add_argument("--model-path", type=str, required=True)
    ap.add_argument("--model-base", type=str, default=None)
    ap.add_argument("--image-folder", type=str, default="")
    ap.add_argument("--question-file", type=str, required=True)
    ap.add_argument("--answers-file", type=str, default="answer.jsonl")
    ap.add_argument("--conv-mode", type=str, default="llava_v1")
    ap.add_argument("--num-chunks", "--num_chunks", dest="num_chunks", type=int_at_least(1), default=None,
                    help="split the questions into this many chunks (default 1, or WORLD_SIZE under torchrun)")
    ap.add_argument("--chunk-idx", "--chunk_idx", dest="chunk_idx", type=int_at_least(0), default=None,
                    help="which chunk this process answers (0-based)")
    add_decoding_args(ap, max_new_tokens)
    ap.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ap.add_argument("--vision-tower", default=None, help="override mm_vision_tower (a local CLIP folder)")
    ap.add_argument("--overwrite", action="store_true",
                    help="start the answers file afresh instead of resuming it")
    ap.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int_at_least(1), default=1,
                    help="questions per model call (default 1, as LLaVA); answers are the same at any batch size")
    ap.add_argument("--bucket-window", dest="bucket_window", type=int_at_least(1), default=None,
                    help="sort each window of W questions by prompt length before batching them (answers are "
                         "still written in question order); default: batches in question order")
    add_prune_args(ap)
    return ap


# ------------------------------------------------------------------------------------------------ model


def _device_for(args: argparse.Namespace, shard: Shard) -> str | None:
    if args.device:
        return args.device
    if shard.mode == "torchrun" and shard.local_rank is not None:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{shard.local_rank}"
    return None


def load_model(args: argparse.Namespace, device: str | None):
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    try:
        return load_pretrained_model(args.model_path, args.model_base, get_model_name_from_path(args.model_path),
                                     device=device, torch_dtype=args.dtype,
                                     attn_implementation=args.attn_implementation, vision_tower=args.vision_tower)
    except (OSError, ValueError, NotImplementedError) as err:
        # The loader's messages already name the folder and the fix; one line instead of a traceback.
        raise EvalInputError(f"cannot load --model-path {args.model_path}: {err}") from None


SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."


def instruction_text(question: str) -> str:
    """The instruction a vision-stage method that reads text (CDPruner) sees: the question without
    LLaVA's short-answer suffix, as CDPruner's driver passes it (``texts=``)."""
    return question.replace(SHORT_ANSWER_SUFFIX, "")


def build_prompt(item: Item, conv_mode: str, model_config) -> str:
    """LLaVA's prompt: the image marker lines before the question, then the conversation template.

    A question with several images gets one marker line per image, in order (the model gives each image
    its own 576 tokens).
    """
    from llava.conversation import build_prompt as conversation_prompt

    n_images = item.num_images if item.load_image is not None else 0
    return conversation_prompt(item.question, conv_mode, n_images, getattr(model_config, "mm_use_im_start_end", False))


def _prefetch(items: list[Item], prepare: Callable[[Item], Any], depth: int = 2) -> Iterator[tuple[Item, Any]]:
    """Prepare the next items (image decoding, CLIP preprocessing, tokenising) while the model generates.

    Order is kept; an error in the worker is raised in the caller at the item where it happened.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        # Ctrl-C is the main thread's business; a signal landing here, inside torch or PIL, can abort the process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for item in items:
                if not put((item, prepare(item), None)):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put((None, None, err))
            return
        put(done)

    thread = threading.Thread(target=work, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            item, prepared, err = got
            if err is not None:
                raise err
            yield item, prepared
    finally:
        stop.set()
        # Wait for the item in hand: a worker still inside torch or PIL when the interpreter shuts down
        # (Ctrl-C) aborts the process ("terminate called without an active exception") instead of exiting.
        thread.join(timeout=60)


def budget_info(prune, model) -> dict:
    """N kept per image and its average-token equivalent over all layers (V and V without pruning).

    Multi-stage methods also record every stage (layer, kept, merged); ``kept_tokens`` is then what the
    last stage leaves. The method's options (defaults included) are written too.
    """
    from entropyprune.config import stages_average

    num_layers = model.config.num_hidden_layers
    tower = model.get_vision_tower()
    num_visual = tower.num_patches if tower is not None else None
    info = {"num_layers": num_layers, "num_visual_tokens": num_visual, "method": None, "layer": None,
            "kept_tokens": num_visual, "avg_tokens_equivalent": num_visual}
    if num_visual is not None and per_image_counts(model):
        # LLaVA-1.6: V differs per image, so no one count holds; each answer's metadata says its images'
        # V, kept N and average (from the prune trace) and the run record aggregates them.
        info.update(num_visual_tokens=None, kept_tokens=None, avg_tokens_equivalent=None, per_image=True)
        if prune is not None:
            layer = prune.layer if prune.adaptive else prune.image_schedule(num_layers, num_visual)[0][0].layer
            info.update(method=prune.method, layer=layer, method_options=prune.options)
        return info
    if prune is not None and num_visual is not None and prune.adaptive:
        # Each image's count is the method's choice: the record gathers them from the answers' metadata.
        info.update(method=prune.method, layer=0, kept_tokens=None, avg_tokens_equivalent=None, adaptive=True,
                    method_options=prune.options)
    elif prune is not None and num_visual is not None:
        stages = prune.schedule(num_layers, num_visual)
        info.update(method=prune.method, layer=stages[0].layer, kept_tokens=stages[-1].out,
                    avg_tokens_equivalent=float(stages_average(stages, num_layers, num_visual)),
                    method_options=prune.options)
        if len(stages) > 1 or stages[0].merged:
            info["stages"] = [{"layer": st.layer, "kept": st.keep, "merged": st.merged} for st in stages]
    return info


def per_image_counts(model) -> bool:
    """Whether each image's visual-token count V is its own (LLaVA-1.6's anyres), not the tower's."""
    return getattr(model.config, "image_aspect_ratio", None) == "anyres"


def image_counts(visual: list[int], stages: list, num_layers: int) -> dict:
    """An answer's per-image record on LLaVA-1.6: each image's V, the N it kept after its last stage and
    its average over all L layers (V before the first stage, then each stage's count). `stages`: the prune
    trace's :func:`llava.eval.batching.stage_counts` for the row (empty without pruning: nothing was cut)."""
    from types import SimpleNamespace

    from entropyprune.config import stages_average

    if not stages:
        stages = [(v, []) for v in visual]
    out: dict = {"visual_tokens": [], "kept_tokens": [], "avg_tokens": []}
    capped = 0
    for v, per_stage, *flag in stages:
        steps = [SimpleNamespace(layer=layer, out=n) for layer, n in per_stage]
        out["visual_tokens"].append(v)
        out["kept_tokens"].append(steps[-1].out if steps else v)
        out["avg_tokens"].append(float(stages_average(steps, num_layers, v)))
        capped += bool(flag and flag[0])
    if capped:  # images whose V was below the budget: they kept all their tokens (PruneConfig.image_schedule)
        out["capped_images"] = capped
    return out


def _version() -> str:
    from llava.eval.record import package_version

    return package_version()


# ------------------------------------------------------------------------------------------------ run


def _check_images(items: list[Item]) -> None:
    missing = [it for it in items if it.image_path is not None and not os.path.isfile(it.image_path)]
    if missing:
        first = missing[0]
        raise EvalInputError(f"{len(missing)} image file(s) not found, e.g. {first.image_path} (question at "
                             f"{first.source}). Check --image-folder; see docs/Evaluation.md for the layout.")


def resolve_layer(prune, model_path: str):
    """`--prune-layer auto` -> the model's Entropy Collapse Layer, before anything else.

    The number, not "auto", goes into the sidecar and the run record, so a resumed file cannot mix two
    layers and the report can place the run.
    """
    if prune is None or prune.layer != "auto":
        return prune
    from entropyprune.ecl import resolve_auto_layer

    try:
        return resolve_auto_layer(prune, model_path)
    except ValueError as err:  # ECLNotFoundError: the message says how to measure the layer
        raise EvalInputError(str(err)) from None


def run(bench: Benchmark, args: argparse.Namespace, loaded=None, env: Mapping[str, str] | None = None) -> str:
    """Answer this process's share of the questions; returns the path of the answers written.

    loaded: an already loaded (tokenizer, model, image_processor, context_len), reused instead of loading
    --model-path (tests pass the tiny model this way). env: where RANK/WORLD_SIZE are read (os.environ).
    """
    from llava.eval.prune_args import prune_config_from_args

    env = os.environ if env is None else env
    started = time.time()
    if args.num_beams != 1:
        raise EvalInputError(f"--num_beams {args.num_beams}: beam search is not supported; LLaVA's benchmarks "
                             "decode greedily (--num_beams 1)")
    prune = resolve_layer(prune_config_from_args(args), args.model_path)
    shard = resolve_shard(args, env)
    out = shard.answers_file
    with answers_lock(out):
        try:
            rows = bench.load_rows(args)
            if not rows:  # a run over nothing would record a "complete" benchmark and score it 0
                raise EvalInputError(f"--question-file {args.question_file} holds no questions")
            mine = items_of(bench, get_chunk(rows, shard.num, shard.idx), args)
            settings = settings_of(bench, args, prune)
            if args.overwrite:
                for path in (out, meta_path(out)):
                    if os.path.exists(path):
                        os.remove(path)
            meta = check_resumable(out, settings)
            clear_failure(out)
            done = answered_keys(bench, read_answers(out, truncate_partial=True), out)
            todo = pending_items(bench, mine, done)
            _check_images(todo)
            if todo or meta is None or (meta.get("kept_tokens") is None and not meta.get("per_image")):
                meta = _answer(bench, args, shard, settings, prune, mine, todo, loaded, started)
            else:
                print(f"{out}: all {len(mine)} answers present; nothing to do", file=sys.stderr)
            records = read_answers(out)
            complete = not pending_items(bench, mine, answered_keys(bench, records, out))
            meta.update(answers=len(records), complete=complete, updated=utc_now())
            if meta.get("per_image"):  # LLaVA-1.6: images whose V was below the budget kept all their tokens
                meta["capped_images"] = sum((r.get("metadata") or {}).get("capped_images", 0) for r in records)
            write_json(meta_path(out), meta)
        except BaseException:
            if shard.mode == "torchrun":
                # Rank 0 would otherwise wait for this shard forever; it looks for this marker.
                mark_failure(out)
            raise

    if shard.mode == "torchrun" and shard.idx == 0:
        parts = [shard_path(shard.final_file, shard.num, r) for r in range(shard.num)]
        expected = [Counter(bench.answer_key(answer_stub(bench, it))
                            for it in items_of(bench, get_chunk(rows, shard.num, r), args))
                    for r in range(shard.num)]
        wait_for_shards(bench, parts, expected, started)
        merge_answers(shard.final_file, parts)
        return shard.final_file
    return out


def _answer(bench, args, shard, settings, prune, mine, todo, loaded, started) -> dict:
    import shortuuid
    from tqdm import tqdm

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import get_conv_template
    from llava.decoding import decode_answer
    from llava.eval.batching import Prepared, answer_stream
    from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token

    try:
        get_conv_template(args.conv_mode)  # a bad --conv-mode fails before the model is loaded
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    if loaded is None:
        loaded = load_model(args, _device_for(args, shard))
    tokenizer, model, image_processor, _ = loaded
    try:
        model.set_prune(prune)  # checks the budget against this model's depth and visual tokens
    except (ValueError, NotImplementedError) as err:
        raise EvalInputError(f"pruning flags: {err}") from None
    model_name = get_model_name_from_path(args.model_path)

    meta = {
        "settings": settings,
        "model_name": model_name,
        "question_file": os.path.abspath(os.path.expanduser(args.question_file)),
        "chunk": {"num_chunks": shard.num, "chunk_idx": shard.idx, "mode": shard.mode},
        "questions": len(mine),
        **budget_info(prune, model),
        "device": str(model.device),
        "torch_dtype": str(model.dtype).replace("torch.", ""),
        # For information only (not a setting: answers are the same at any batch size); the last run's values.
        "batch_size": args.batch_size,
        "bucket_window": args.bucket_window,
        "version": _version(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
    }
    write_json(meta_path(shard.answers_file), meta)

    # id(item) -> (its prompt's text tokens, image markers, its images' visual tokens when they vary: LLaVA-1.6)
    text_tokens: dict[int, tuple[int, int, list[int] | None]] = {}
    anyres = None
    if per_image_counts(model):
        from llava.anyres import anyres_num_tokens

        tower = model.get_vision_tower()
        anyres = (tower.num_patches_per_side, tower.config.image_size)

    def prepare(item: Item) -> Prepared:
        prompt = build_prompt(item, args.conv_mode, model.config)
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        markers = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        text_tokens[id(item)] = (input_ids.numel() - markers, markers, None)
        if item.load_image is None:
            return Prepared(input_ids)
        images = item.load_image() if item.num_images > 1 else [item.load_image()]
        if anyres is not None:  # LLaVA-1.6: each image's own V (the splice, before any in-LLM pruning)
            text_tokens[id(item)] = (input_ids.numel() - markers, markers,
                                     [anyres_num_tokens(im.size, model.config, *anyres) for im in images])
        pixels = process_images(images, image_processor, model.config)
        return Prepared(input_ids, pixels, [image.size for image in images], instruction_text(item.question))

    desc = bench.name if shard.num == 1 else f"{bench.name} {shard.idx + 1}/{shard.num}"
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, dynamic_ncols=True)
    make = bench.make_record or default_record
    ahead = max(2, args.batch_size, args.bucket_window or 0)  # the next batch (window) is ready when needed
    adaptive = prune is not None and prune.adaptive
    # LLaVA cuts a spliced prompt at tokenizer_model_max_length (2048 for LLaVA-1.5); the cut is kept, as
    # in LLaVA, but never silent: the answer's metadata and the run record say which prompts were cut.
    limit = getattr(model.config, "tokenizer_model_max_length", None)
    spliced = _spliced_per_image(prune, model)
    num_layers = model.config.num_hidden_layers
    truncated = capped = 0
    vision_anyres = anyres is not None and prune is not None and prune.stage == "vision"
    stream = answer_stream(model, _prefetch(todo, prepare, depth=ahead), args.batch_size, args.bucket_window,
                           with_counts=adaptive, with_stages=anyres is not None,
                           do_sample=args.temperature > 0, temperature=args.temperature, top_p=args.top_p,
                           num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True)
    with AnswerWriter(shard.answers_file) as writer, closing(stream):
        for item, output_ids, *counts in stream:
            text = decode_answer(tokenizer, output_ids)
            answer = make(item, text, shortuuid.uuid(), model_name)
            if adaptive:  # the method chose each image's count: the answer says what it kept
                answer.setdefault("metadata", {})["kept_tokens"] = counts[0]
            words, markers, visual = text_tokens.pop(id(item))
            if anyres is not None and visual:  # LLaVA-1.6: what each image really had and kept
                answer.setdefault("metadata", {}).update(image_counts(visual, counts[-1], num_layers))
                capped += answer["metadata"].get("capped_images", 0)
            if visual and vision_anyres and counts[-1]:  # LLaVA-1.6 pruned before the splice: what was kept
                visual = [steps[-1][1] for _v, steps, *_ in counts[-1]]
            length = words + (sum(counts[0]) if adaptive else sum(visual) if visual is not None else
                              markers * spliced)
            if limit is not None and length > limit:
                answer.setdefault("metadata", {})["truncated"] = {"prompt_tokens": length, "kept_tokens": limit}
                truncated += 1
            writer.write(answer)
            bar.update(1)
    bar.close()
    if capped:
        print(f"warning: {capped} image(s) had fewer visual tokens than the budget asks ({prune.describe()}) and "
              "kept all of them; their answers' metadata counts them (\"capped_images\"), as does the run "
              "record.", file=sys.stderr)
    if truncated:
        print(f"warning: {truncated} prompt(s) were longer than the model's context ({limit} tokens with their "
              "images) and were cut there, as LLaVA cuts them; their answers' metadata says so "
              '("truncated").', file=sys.stderr)
    return meta


def _spliced_per_image(prune, model) -> int:
    """The tokens one image adds to the spliced prompt: all its patches, or what a vision-stage method keeps
    (an adaptive method's counts come with each answer instead)."""
    tower = model.get_vision_tower()
    visual = tower.num_patches if tower is not None else 0
    if prune is None or prune.adaptive or prune.stage != "vision":
        return visual
    return prune.schedule(model.config.num_hidden_layers, visual)[0].out


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "merge":
        raise ValueError("usage: python -m llava.eval.driver merge --output MERGED.jsonl PART.jsonl [PART ...]")
    merge_main(argv[1:])


if __name__ == "__main__":
    run_cli(main)

