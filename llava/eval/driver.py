"""The machinery shared by the benchmark drivers (`model_vqa*.py`): flags, chunking, resume, answer writing.

Each driver only says how its question file becomes `Item`s (one per answer line) and how an answer line is
keyed; everything else lives here:

- LLaVA's flags (`--model-path --question-file --answers-file --conv-mode --num-chunks --chunk-idx
  --temperature --top_p ...`, the spellings with dashes too), the pruning flags and `--device --dtype
  --attn-implementation --vision-tower`.
- Chunking as LLaVA's `split_list`/`get_chunk`: chunk size ceil(n / num_chunks), contiguous slices.
- `torchrun --nproc-per-node N`: without `--num-chunks`, RANK/WORLD_SIZE pick the chunk; each rank writes
  `<answers stem>/<W>_<rank>.jsonl` (the names the scripts give their chunks), and rank 0 waits until every
  shard holds all of its answers (a file-based barrier: no torch.distributed) and merges them, in rank
  order, into `--answers-file`.
- Answer lines in LLaVA's format, each appended, flushed and fsync'd as soon as it is made. A rerun
  resumes: questions already answered are skipped (no duplicates), a partial last line left by a killed
  run is cut off and that question is answered again.
- A sidecar `<answers-file>.meta.json`: the settings that shape the answers (checked on resume, so one
  file never mixes two configurations), the pruning config, N kept and its average-token equivalent.

    python -m llava.eval.driver merge --output answers/ckpt.jsonl answers/ckpt/2_0.jsonl answers/ckpt/2_1.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from llava.eval import EvalInputError, load_json, read_jsonl, write_json

META_SUFFIX = ".meta.json"
POLL_SECONDS = 1.0


# ------------------------------------------------------------------------------------------------ items


@dataclass
class Item:
    """One answer to produce: what the model is asked and what the answer line records."""

    question_id: Any
    prompt: str  # the answer's `prompt` field (LLaVA's `cur_prompt`)
    question: str  # the user turn without the image marker (suffix included)
    load_image: Callable[[], Any] | None = None  # returns a PIL image; None for a text-only question
    image_path: str | None = None  # checked before the model is loaded
    extra: dict = field(default_factory=dict)  # benchmark-specific answer fields (MMBench)
    source: str = ""  # "file:line", for error messages


@dataclass
class Benchmark:
    """What a driver plugs into `run`."""

    name: str
    # args -> rows (the unit LLaVA chunks on: a question line, a TSV row, a JSON element)
    load_rows: Callable[[argparse.Namespace], list]
    # (row, args) -> the answers that row produces (MMBench --all-rounds: one per round)
    expand: Callable[[Any, argparse.Namespace], list[Item]]
    # answer line (or an item's stub of one) -> the key that says "this question is answered"
    answer_key: Callable[[Mapping], tuple]
    # (item, text, answer_id, model_id) -> the answer line, fields in LLaVA's order
    make_record: Callable[[Item, str, str, str], dict] | None = None
    # flags that change the answers beyond the common ones (recorded in the sidecar, checked on resume)
    options: Callable[[argparse.Namespace], dict] = lambda args: {}


def default_record(item: Item, text: str, answer_id: str, model_id: str) -> dict:
    return {"question_id": item.question_id, "prompt": item.prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": {}}


def prompt_key(record: Mapping) -> tuple:
    # MME and TextVQA repeat a question_id for every question about one image, so the prompt is part of the key.
    return (str(record["question_id"]), record["prompt"])


def _stub(bench: Benchmark, item: Item) -> dict:
    make = bench.make_record or default_record
    return make(item, "", "", "")


# ------------------------------------------------------------------------------------------------ flags


def _int_at_least(low: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {number}")
        return number

    return parse


def build_parser(description: str, max_new_tokens: int) -> argparse.ArgumentParser:
    """LLaVA's driver flags (defaults as in LLaVA) plus ours; the drivers add their own on top."""
    from llava.eval.prune_args import add_prune_args

    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Required, unlike LLaVA's placeholder defaults (facebook/opt-350m, tables/question.jsonl), which only fail later.
    ap.add_argument("--model-path", type=str, required=True)
    ap.add_argument("--model-base", type=str, default=None)
    ap.add_argument("--image-folder", type=str, default="")
    ap.add_argument("--question-file", type=str, required=True)
    ap.add_argument("--answers-file", type=str, default="answer.jsonl")
    ap.add_argument("--conv-mode", type=str, default="llava_v1")
    ap.add_argument("--num-chunks", "--num_chunks", dest="num_chunks", type=_int_at_least(1), default=None,
                    help="split the questions into this many chunks (default 1, or WORLD_SIZE under torchrun)")
    ap.add_argument("--chunk-idx", "--chunk_idx", dest="chunk_idx", type=_int_at_least(0), default=None,
                    help="which chunk this process answers (0-based)")
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    ap.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    ap.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=_int_at_least(1),
                    default=max_new_tokens)
    ap.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU, fp32 on CPU)")
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ap.add_argument("--vision-tower", default=None, help="override mm_vision_tower (a local CLIP folder)")
    ap.add_argument("--overwrite", action="store_true",
                    help="start the answers file afresh instead of resuming it")
    add_prune_args(ap)
    return ap


# ------------------------------------------------------------------------------------------------ chunks


def split_list(lst: list, n: int) -> list[list]:
    """LLaVA's split_list: contiguous chunks of ceil(len / n) items (possibly fewer than n chunks)."""
    if not lst:
        return []
    size = math.ceil(len(lst) / n)
    return [lst[i:i + size] for i in range(0, len(lst), size)]


def get_chunk(lst: list, n: int, k: int) -> list:
    """Chunk k of split_list(lst, n). Where ceil leaves fewer than n chunks, LLaVA raises IndexError for
    the missing ones; here they are empty, so a run on more GPUs than the data needs still succeeds."""
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else []


@dataclass
class Shard:
    num: int
    idx: int
    mode: str  # "single", "chunks" (--num-chunks) or "torchrun" (RANK/WORLD_SIZE)
    answers_file: str  # where this process writes
    final_file: str | None = None  # torchrun: what rank 0 merges into
    local_rank: int | None = None


def shard_path(answers_file: str, num: int, idx: int) -> str:
    """`answers/ckpt.jsonl` -> `answers/ckpt/<num>_<idx>.jsonl`, the chunk names LLaVA's scripts use."""
    stem = os.path.splitext(answers_file)[0]
    return os.path.join(stem, f"{num}_{idx}.jsonl")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise EvalInputError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(args: argparse.Namespace, env: Mapping[str, str]) -> Shard:
    answers = os.path.expanduser(args.answers_file)
    if args.num_chunks is not None:
        idx = args.chunk_idx or 0
        if idx >= args.num_chunks:
            raise EvalInputError(f"--chunk-idx {idx} is out of range for --num-chunks {args.num_chunks} (0..."
                                 f"{args.num_chunks - 1})")
        return Shard(args.num_chunks, idx, "chunks" if args.num_chunks > 1 else "single", answers)
    if args.chunk_idx not in (None, 0):
        raise EvalInputError(f"--chunk-idx {args.chunk_idx} needs --num-chunks")
    world = _env_int(env, "WORLD_SIZE")
    if world is not None and world > 1:
        rank = _env_int(env, "RANK")
        if rank is None or not 0 <= rank < world:
            raise EvalInputError(f"RANK={env.get('RANK')!r} is not in 0..{world - 1} (WORLD_SIZE={world}); "
                                 "launch with torchrun --nproc-per-node N")
        return Shard(world, rank, "torchrun", shard_path(answers, world, rank), answers,
                     _env_int(env, "LOCAL_RANK"))
    return Shard(1, 0, "single", answers)


def _items_of(bench: Benchmark, rows: list, args: argparse.Namespace) -> list[Item]:
    return [item for row in rows for item in bench.expand(row, args)]


def jsonl_benchmark(name: str) -> Benchmark:
    """LLaVA's jsonl question files (`{"question_id", "image", "text", ...}`): MME, TextVQA, MM-Vet.

    The prompt is the line's text as it is (the suffix is already in the file); images are converted to
    RGB as LLaVA's loader and model_vqa do.
    """

    def load_rows(args):
        return read_question_jsonl(args.question_file)

    def expand(row, args):
        line, source = row
        path = os.path.join(os.path.expanduser(args.image_folder), line["image"])
        return [Item(question_id=line["question_id"], prompt=line["text"], question=line["text"],
                     load_image=lambda: open_rgb(path), image_path=path, source=source)]

    return Benchmark(name=name, load_rows=load_rows, expand=expand, answer_key=prompt_key)


# ------------------------------------------------------------------------------------------------ inputs


def read_question_jsonl(path: str, required: Iterable[str] = ("question_id", "image", "text")) -> list[tuple]:
    """LLaVA's question jsonl as (record, "file:line") pairs; a bad line is an error naming file and line."""
    path = os.path.expanduser(path)
    rows = read_jsonl(path, "LLaVA question file", required, fix="See docs/Evaluation.md for where the "
                      "benchmark files go.")
    return [(record, f"{path}:{lineno}") for lineno, record in rows]


def open_rgb(path: str):
    """Open an image as RGB.

    Every driver converts before padding. LLaVA's loader and model_vqa do it themselves; for ScienceQA and
    MMBench LLaVA left it to transformers 4.37's CLIP processor, whose conversion was PIL's convert("RGB")
    after padding, which gives the same pixels as converting first. Current processors alpha-composite onto
    white instead, so leaving it to them would turn transparent backgrounds white where LLaVA saw black.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise EvalInputError(f"image file not found: {path}. Check --image-folder.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise EvalInputError(f"cannot read image {path}: {err}") from None


# ------------------------------------------------------------------------------------------------ answers


def _split_complete(data: bytes) -> tuple[bytes, int]:
    """(the complete lines, bytes after the last newline)."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], len(data) - cut


def read_answers(path: str, truncate_partial: bool = False) -> list[dict]:
    """Answer records of a jsonl file we write, in order.

    A last line without its newline is what a run killed mid-write leaves; with truncate_partial it is cut
    off the file (its question gets answered again), otherwise it is ignored (another process may still
    be writing it). A complete line that is not JSON is damage this code cannot explain: an error.
    """
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete, partial = _split_complete(data)
    if partial and truncate_partial:
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(f"{path}: removed a partial last line ({partial} bytes) left by an interrupted run; "
                      "that question will be answered again", stacklevel=2)
    records = []
    for lineno, line in enumerate(complete.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{path}:{lineno}: malformed answer line ({err.msg}). Delete that line to "
                                 "resume, or pass --overwrite to start again.") from None
        if not isinstance(record, dict):
            raise EvalInputError(f"{path}:{lineno}: not an answer line (a JSON object expected).")
        records.append(record)
    return records


def answered_keys(bench: Benchmark, records: list[dict], path: str) -> Counter:
    keys: Counter = Counter()
    for n, record in enumerate(records, start=1):
        try:
            keys[bench.answer_key(record)] += 1
        except (KeyError, TypeError, ValueError):
            raise EvalInputError(f"{path}: answer {n} lacks the fields a {bench.name} answer has "
                                 f"({record!r:.120}); is this the right --answers-file?") from None
    return keys


def pending_items(bench: Benchmark, items: list[Item], done: Counter) -> list[Item]:
    """Items not yet answered. Keys are counted, so a question listed twice is answered twice."""
    left = Counter(done)
    todo = []
    for item in items:
        key = bench.answer_key(_stub(bench, item))
        if left[key] > 0:
            left[key] -= 1
        else:
            todo.append(item)
    return todo


class AnswerWriter:
    """Appends answer lines; each is on disk (flushed and fsync'd) before the next question starts."""

    def __init__(self, path: str):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        # One write call per line keeps an interruption to at most one partial (unterminated) line.
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------ sidecar


def meta_path(answers_file: str) -> str:
    return answers_file + META_SUFFIX


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _normalise_model_path(path: str) -> str:
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.isdir(expanded) else path


def settings_of(bench: Benchmark, args: argparse.Namespace, prune) -> dict:
    """Everything that changes the answers; two runs may share an answers file only if these are equal."""
    return {
        "benchmark": bench.name,
        "model_path": _normalise_model_path(args.model_path),
        "model_base": args.model_base,
        "vision_tower": args.vision_tower,
        "conv_mode": args.conv_mode,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
        "prune": prune.to_dict() if prune is not None else None,
        "options": bench.options(args),
    }


def load_meta(answers_file: str) -> dict | None:
    path = meta_path(answers_file)
    if not os.path.isfile(path):
        return None
    meta = load_json(path, "answers sidecar", "Delete it and rerun with --overwrite.")
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise EvalInputError(f"{path} is not an answers sidecar (no 'settings'); delete it and rerun with "
                             "--overwrite.")
    return meta


def check_resumable(answers_file: str, settings: dict) -> dict | None:
    """The existing sidecar, after checking that resuming would not mix configurations."""
    meta = load_meta(answers_file)
    if not (os.path.isfile(answers_file) and os.path.getsize(answers_file)):
        return None  # no answers to mix with: a sidecar left alone is stale and gets replaced
    if meta is None:
        if os.path.isfile(answers_file) and os.path.getsize(answers_file):
            warnings.warn(f"{answers_file} has no {META_SUFFIX} sidecar, so its settings cannot be checked; "
                          "resuming it as is", stacklevel=2)
        return None
    old = meta["settings"]
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now" for k in diff)
        raise EvalInputError(f"{answers_file} was written with other settings ({shown}). Pass another "
                             "--answers-file, or --overwrite to start it again.")
    return meta


def budget_info(prune, model) -> dict:
    """N kept per image and its average-token equivalent over all layers (V and V without pruning)."""
    num_layers = model.config.num_hidden_layers
    tower = model.get_vision_tower()
    num_visual = tower.num_patches if tower is not None else None
    info = {"num_layers": num_layers, "num_visual_tokens": num_visual, "method": None, "layer": None,
            "kept_tokens": num_visual, "avg_tokens_equivalent": num_visual}
    if prune is not None and num_visual is not None:
        n = prune.resolve(num_layers, num_visual)
        info.update(method=prune.method, layer=prune.layer, kept_tokens=n,
                    avg_tokens_equivalent=prune.avg_tokens_equivalent(n, num_layers, num_visual))
    return info


def _version() -> str:
    from llava.eval.record import package_version

    return package_version()


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


def image_prefix(model_config) -> str:
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

    if getattr(model_config, "mm_use_im_start_end", False):
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n"
    return DEFAULT_IMAGE_TOKEN + "\n"


def build_prompt(item: Item, conv_mode: str, model_config) -> str:
    """LLaVA's prompt: the image marker line before the question, then the conversation template."""
    from llava.conversation import get_conv_template

    qs = (image_prefix(model_config) if item.load_image is not None else "") + item.question
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


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
    try:
        rows = bench.load_rows(args)
        mine = _items_of(bench, get_chunk(rows, shard.num, shard.idx), args)
        settings = settings_of(bench, args, prune)
        if args.overwrite:
            for path in (out, meta_path(out)):
                if os.path.exists(path):
                    os.remove(path)
        meta = check_resumable(out, settings)
        _clear_failure(out)
        done = answered_keys(bench, read_answers(out, truncate_partial=True), out)
        todo = pending_items(bench, mine, done)
        _check_images(todo)
        if todo or meta is None or meta.get("kept_tokens") is None:
            meta = _answer(bench, args, shard, settings, prune, mine, todo, loaded, started)
        else:
            print(f"{out}: all {len(mine)} answers present; nothing to do", file=sys.stderr)
        records = read_answers(out)
        complete = not pending_items(bench, mine, answered_keys(bench, records, out))
        meta.update(answers=len(records), complete=complete, updated=_now())
        write_json(meta_path(out), meta)
    except BaseException:
        if shard.mode == "torchrun":
            # Rank 0 would otherwise wait for this shard forever; it looks for this marker.
            _mark_failure(out)
        raise

    if shard.mode == "torchrun" and shard.idx == 0:
        parts = [shard_path(shard.final_file, shard.num, r) for r in range(shard.num)]
        expected = [Counter(bench.answer_key(_stub(bench, it))
                            for it in _items_of(bench, get_chunk(rows, shard.num, r), args))
                    for r in range(shard.num)]
        _wait_for_shards(bench, parts, expected, started)
        merge_answers(shard.final_file, parts)
        return shard.final_file
    return out


def _answer(bench, args, shard, settings, prune, mine, todo, loaded, started) -> dict:
    import shortuuid
    import torch
    from tqdm import tqdm

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import get_conv_template
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
        "version": _version(),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
    }
    write_json(meta_path(shard.answers_file), meta)

    def prepare(item: Item):
        prompt = build_prompt(item, args.conv_mode, model.config)
        input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        if item.load_image is None:
            return input_ids, None, None
        image = item.load_image()
        pixels = process_images([image], image_processor, model.config)
        return input_ids, pixels, [image.size]

    desc = bench.name if shard.num == 1 else f"{bench.name} {shard.idx + 1}/{shard.num}"
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, dynamic_ncols=True)
    with AnswerWriter(shard.answers_file) as writer:
        for item, (input_ids, pixels, sizes) in _prefetch(todo, prepare):
            if pixels is not None:
                pixels = pixels.to(model.device, dtype=model.dtype)
            with torch.inference_mode():
                output_ids = model.generate(
                    input_ids.to(model.device), images=pixels, image_sizes=sizes,
                    do_sample=args.temperature > 0, temperature=args.temperature, top_p=args.top_p,
                    num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True)
            text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
            make = bench.make_record or default_record
            writer.write(make(item, text, shortuuid.uuid(), model_name))
            bar.update(1)
    bar.close()
    return meta


# ------------------------------------------------------------------------------------------------ torchrun


def _failure_marker(answers_file: str) -> str:
    return answers_file + ".failed"


def _mark_failure(answers_file: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
        with open(_failure_marker(answers_file), "w", encoding="utf-8") as f:
            f.write(_now() + "\n")
    except OSError:
        pass


def _clear_failure(answers_file: str) -> None:
    if os.path.exists(_failure_marker(answers_file)):
        os.remove(_failure_marker(answers_file))


def _wait_for_shards(bench: Benchmark, parts: list[str], expected: list[Counter], started: float,
                     timeout: float | None = None) -> None:
    """Rank 0's barrier: every shard file holds every answer of its chunk.

    Completeness is read from the files themselves, so markers left by an earlier run cannot fool it; a
    `.failed` marker newer than this run's start means a rank died and there is nothing to wait for.
    """
    last_note = time.time()
    while True:
        waiting = []
        for rank, (part, want) in enumerate(zip(parts, expected, strict=True)):
            marker = _failure_marker(part)
            if os.path.exists(marker) and os.path.getmtime(marker) >= started - 1:
                raise EvalInputError(f"rank {rank} failed (see its error above; marker {marker}); rerun the "
                                     "same torchrun command to resume")
            have = answered_keys(bench, read_answers(part), part)
            if any(have[k] < n for k, n in want.items()):
                waiting.append(rank)
        if not waiting:
            return
        if timeout is not None and time.time() - started > timeout:
            raise EvalInputError(f"timed out waiting for rank(s) {waiting} to finish their shards")
        if time.time() - last_note > 60:
            print(f"rank 0: waiting for rank(s) {', '.join(map(str, waiting))} to finish", file=sys.stderr)
            last_note = time.time()
        time.sleep(POLL_SECONDS)


# ------------------------------------------------------------------------------------------------ merge


def merge_answers(output: str, parts: list[str]) -> dict:
    """Concatenate complete chunk answer files in the order given, and merge their sidecars.

    Unlike `cat`, this refuses a chunk that was interrupted (partial last line, or a sidecar that says it
    is incomplete) or that was run with other settings, so a merged file is always one whole configuration.
    """
    if not parts:
        raise EvalInputError("merge needs at least one chunk answers file")
    metas = []
    blobs = []
    for part in parts:
        if not os.path.isfile(part):
            raise EvalInputError(f"chunk answers file not found: {part}; did that chunk run?")
        with open(part, "rb") as f:
            data = f.read()
        _, partial = _split_complete(data)
        if partial:
            raise EvalInputError(f"{part} ends with a partial line (an interrupted run); rerun that chunk to "
                                 "complete it, then merge")
        read_answers(part)  # every line must be valid JSON
        blobs.append(data)
        meta = load_meta(part)
        if meta is not None and not meta.get("complete", False):
            raise EvalInputError(f"{part} is incomplete ({meta.get('answers')} of {meta.get('questions')} "
                                 "answers); rerun that chunk to complete it, then merge")
        metas.append((part, meta))

    known = [(p, m) for p, m in metas if m is not None]
    merged: dict[str, Any] = {}
    if known:
        first_part, first = known[0]
        for part, meta in known[1:]:
            if meta["settings"] != first["settings"]:
                diff = [k for k in first["settings"] if first["settings"][k] != meta["settings"].get(k)]
                raise EvalInputError(f"{part} and {first_part} were run with different settings "
                                     f"({', '.join(diff)}); they cannot be merged")
        merged = {k: v for k, v in first.items() if k not in ("chunk", "questions", "answers", "complete")}
        merged["questions"] = sum(m.get("questions", 0) for _, m in known)
    if len(known) != len(metas):
        missing = [p for p, m in metas if m is None]
        warnings.warn(f"no sidecar for {', '.join(missing)}; the merged sidecar cannot vouch for them",
                      stacklevel=2)

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for data in blobs:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    merged.update(
        chunk={"num_chunks": len(parts), "parts": [os.path.abspath(p) for p in parts], "mode": "merged"},
        answers=len(read_answers(output)),
        complete=bool(known) and len(known) == len(metas),
        updated=_now(),
    )
    write_json(meta_path(output), merged)
    return merged


# ------------------------------------------------------------------------------------------------ CLI


def cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run a driver; bad input is one `error:` line on stderr and exit status 2, not a traceback."""
    try:
        main(None)
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _merge_main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m llava.eval.driver merge",
                                 description="Merge chunk answer files, in the order given, into one.")
    ap.add_argument("--output", required=True, help="the merged answers file")
    ap.add_argument("parts", nargs="+", help="chunk answers files, in chunk order")
    args = ap.parse_args(argv)
    meta = merge_answers(args.output, args.parts)
    print(f"merged {len(args.parts)} chunk(s), {meta['answers']} answers -> {args.output}")
    return meta


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "merge":
        raise SystemExit("usage: python -m llava.eval.driver merge --output MERGED.jsonl PART.jsonl [PART ...]")
    _merge_main(argv[1:])


if __name__ == "__main__":
    cli(lambda _argv: main())
