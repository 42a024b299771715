"""LLaVA's training path on a tiny Llama + CLIP: label masks against hand-built cases, the length-grouped order
against a hand-checked case, the schedules against transformers', and runs of both stages (loss goes down, the
stage-1 projector loads into stage 2, the stage-2 checkpoint loads with the same logits, resuming equals an
uninterrupted run, two processes equal one with accumulation, DeepSpeed ZeRO-2 equals plain PyTorch)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import tokenizer_image_token
from llava.train import data as D
from llava.train import llava_trainer as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.")
COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


@pytest.fixture(autouse=True)
def _one_thread():
    # Two threads on two shared cores spin against the other processes; one is many times faster here.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from llava.tools.make_tiny_checkpoint import build

    return build(str(tmp_path_factory.mktemp("base") / "llama-tiny"), "llama", seed=0)


@pytest.fixture(scope="module")
def tok(base):
    from llava.model.builder import load_tokenizer

    t = load_tokenizer(base)
    t.pad_token = t.unk_token
    return t


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    os.makedirs(root / "images")
    pre, ft = [], []
    for i in range(8):
        color = list(COLORS)[i % 3]
        Image.new("RGB", (48 + 8 * i, 48), COLORS[color]).save(root / "images" / f"{i}.png")
        pre.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "Describe the image.\n<image>"}, {"from": "gpt", "value": f"a {color} square"}]})
        ft.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": color}]})
    ft += [{"id": "t0", "conversations": [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "yes"}]},
           {"id": "t1", "conversations": [{"from": "human", "value": "No?"}, {"from": "gpt", "value": "no"}]}]
    (root / "pre.json").write_text(json.dumps(pre))
    (root / "ft.json").write_text(json.dumps(ft))
    return root


def stage_args(base, data, out, stage, *extra):
    tower = os.path.join(base, "clip-vit-tiny-patch14-336")
    common = ["--model_name_or_path", base, "--vision_tower", tower, "--image_folder", str(data / "images"),
              "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
              "--mm_use_im_patch_token", "False", "--model_max_length", "2048", "--output_dir", str(out),
              "--logging_steps", "1", "--seed", "0"]
    if stage == 1:
        common += ["--version", "plain", "--data_path", str(data / "pre.json"), "--tune_mm_mlp_adapter", "True"]
    else:
        common += ["--version", "v1", "--data_path", str(data / "ft.json"), "--image_aspect_ratio", "pad"]
    return common + list(extra)


# ----------------------------------------------------------------------------------------------------------
# Label masks against hand-built cases


def supervised_after_assistant(ids: list[int], tok) -> list[int]:
    """Hand rule for v1: only what follows each ``ASSISTANT:`` up to and including the next ``</s>`` is learnt."""
    marker = tok(" ASSISTANT:").input_ids[1:]  # the five pieces of " ASSISTANT:" without the BOS
    labels = [IGNORE_INDEX] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i:i + len(marker)] == marker:
            j = i + len(marker)
            while j < len(ids):
                labels[j] = ids[j]
                if ids[j] == tok.eos_token_id:
                    break
                j += 1
            i = j
        i += 1
    return labels


def test_plain_labels_mask_bos_and_image_only(tok):
    sample = [[{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "a red square"}]]
    out = D.preprocess_plain(sample, tok)
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    caption = tok("a red square\n").input_ids[1:]  # the caption chunk after the image, as tokenized on its own
    assert ids == [tok.bos_token_id, IMAGE_TOKEN_INDEX] + caption  # the instruction text is dropped, as in LLaVA
    assert labels == [IGNORE_INDEX, IGNORE_INDEX] + caption


def test_plain_refuses_a_sample_without_image(tok):
    with pytest.raises(ValueError, match="two turns"):
        D.preprocess_plain([[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]], tok)


def v1_prompt(turns):
    text = SYSTEM + " "
    for q, a in turns:
        text += f"USER: {q} ASSISTANT: {a}</s>"
    return text


def test_v1_single_turn_with_image(tok):
    source = [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "Red."}]
    out = D.preprocess_v1([source], tok, has_image=True)
    ids = tokenizer_image_token(v1_prompt([("<image>\nWhat color is it?", "Red.")]), tok)
    assert out["input_ids"][0].tolist() == ids
    labels = out["labels"][0].tolist()
    assert labels == supervised_after_assistant(ids, tok)
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]).strip() == "Red.</s>"


def test_v1_multi_turn_legacy_tokenizer(base):
    # With legacy=True the text after </s> keeps SentencePiece's leading "▁", so each round alone has the tokens it
    # has in the conversation: LLaVA applies no per-round offset, and every answer is learnt.
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(base, legacy=True)
    tok.pad_token = tok.unk_token
    turns = [("<image>\nWhat color is it?", "Red."), ("How many circles?", "Three circles."), ("Sure?", "Yes.")]
    source = [m for q, a in turns for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    out = D.preprocess_v1([source], tok, has_image=True)
    ids = tokenizer_image_token(v1_prompt(turns), tok)
    labels = out["labels"][0].tolist()
    assert labels == supervised_after_assistant(ids, tok)
    learnt = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert learnt.replace(" ", "") == "Red.</s>Threecircles.</s>Yes.</s>"


def test_v1_offset_for_non_legacy_tokenizers_and_the_mismatch(tok, capsys):
    # The checkpoint's tokenizer is legacy=False: LLaVA then takes one token off every round after the first
    # (Vicuna's tokenizer drops the "▁" there). This vocabulary has "U" and "▁U" alike, so the counts come out one
    # short per later round: LLaVA's mismatch rule masks the whole sample and says so.
    assert tok.legacy is False
    turns = [("<image>\nWhat color is it?", "Red."), ("How many circles?", "Three circles.")]
    source = [m for q, a in turns for m in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    out = D.preprocess_v1([source], tok, has_image=True, sample_id="s1")
    ids = tokenizer_image_token(v1_prompt(turns), tok)
    assert out["labels"][0].tolist() == [IGNORE_INDEX] * len(ids)
    err = capsys.readouterr().err
    assert f"tokenization mismatch in sample 's1': {len(ids) - 1} vs. {len(ids)}" in err
    # The same conversation with the offset off (legacy=True's rule) is counted right.
    fixed = D.preprocess_v1([source], tok, has_image=True, legacy=True)["labels"][0].tolist()
    assert fixed == supervised_after_assistant(ids, tok)


def test_v1_text_only_sample(tok):
    source = [{"from": "human", "value": "Say yes."}, {"from": "gpt", "value": "yes"}]
    out = D.preprocess_v1([source], tok, has_image=False)
    ids = tok(v1_prompt([("Say yes.", "yes")])).input_ids
    assert out["input_ids"][0].tolist() == ids and IMAGE_TOKEN_INDEX not in ids
    assert out["labels"][0].tolist() == supervised_after_assistant(ids, tok)


def test_v1_truncated_sample_keeps_what_fits(tok, capsys):
    long_answer = " ".join(["circles"] * 40)
    source = [{"from": "human", "value": "Count."}, {"from": "gpt", "value": long_answer}]
    old = tok.model_max_length
    tok.model_max_length = 60
    try:
        out = D.preprocess_v1([source], tok, has_image=False)
    finally:
        tok.model_max_length = old
    full = tok(v1_prompt([("Count.", long_answer)])).input_ids
    ids = out["input_ids"][0].tolist()
    assert ids == full[:60]
    # No mismatch masking once the count reaches model_max_length: the answer's first part is learnt, no </s>.
    assert out["labels"][0].tolist() == supervised_after_assistant(full, tok)[:60]
    assert "mismatch" not in capsys.readouterr().err


def test_collator_right_pads_and_keeps_images_of_image_rows(tok):
    rows = [dict(input_ids=torch.tensor([1, IMAGE_TOKEN_INDEX, 5, 6]), labels=torch.tensor([-100, -100, 5, 6]),
                 image=torch.ones(3, 4, 4)),
            dict(input_ids=torch.tensor([1, 7]), labels=torch.tensor([-100, 7]), image=None)]
    batch = D.DataCollatorForSupervisedDataset(tok)(rows)
    assert batch["input_ids"].tolist() == [[1, IMAGE_TOKEN_INDEX, 5, 6], [1, 7, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 5, 6], [-100, 7, -100, -100]]
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["images"].shape == (1, 3, 4, 4)


# ----------------------------------------------------------------------------------------------------------
# The length-grouped order and the schedules


def test_split_to_even_chunks_hand_case():
    lengths = {0: 10, 1: 8, 2: 3, 3: 1}
    # longest first to the lightest chunk: 10 -> A, 8 -> B, 3 -> B (8 < 10), B is full, 1 -> A
    assert T.split_to_even_chunks([0, 1, 2, 3], lengths, 2) == [[0, 3], [1, 2]]
    assert T.split_to_even_chunks([0, 1, 2], lengths, 2) == [[0, 2], [1]]  # 3 into 2: round-robin


def test_modality_grouping_hand_case():
    # One megabatch per modality (4 >= each count): both are the "last" ones, which LLaVA puts last together in
    # index order, whatever the permutation: the result is 0..5.
    lengths = [5, 1, 9, 3, -2, -7]
    g = torch.Generator().manual_seed(3)
    assert T.get_modality_length_grouped_indices(lengths, 4, 1, generator=g) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modality_grouping_structure(seed):
    lengths = [3, 9, 4, 8, 1, 7, 6, 2, -5, -4, -3, -2]  # 8 with images, 4 text-only; megabatch = 2 * 2
    order = T.get_modality_length_grouped_indices(lengths, 2, 2, generator=torch.Generator().manual_seed(seed))
    assert sorted(order) == list(range(12))
    first, rest = order[:4], order[4:]
    assert all(lengths[i] > 0 for i in first)  # the one full megabatch that is not last: images only
    # ... dealt longest first into two chunks of two; the other megabatches go last, by index
    by_len = sorted(first, key=lambda i: -lengths[i])
    assert first[0] == by_len[0] and first[2] == by_len[1]
    assert rest == sorted(rest)


def test_schedules_match_transformers():
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    for kind, ref in (("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched = ref(opt, 3, 20)
        ours = T.lr_lambda(kind, 3, 20)
        for step in range(22):
            assert ours(step) == pytest.approx(sched.get_last_lr()[0], abs=1e-12), (kind, step)
            opt.step()
            sched.step()


# ----------------------------------------------------------------------------------------------------------
# Runs


def test_stage1_loss_goes_down_and_the_projector_loads_into_stage2(base, data, tmp_path):
    from llava.train.train import build_model, parse_args, train

    out = tmp_path / "pretrain"
    trainer = train(stage_args(base, data, out, 1, "--per_device_train_batch_size", "8", "--max_steps", "6",
                               "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--save_strategy", "no"))
    losses = [r["loss"] for r in map(json.loads, open(out / "train_log.jsonl"))]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5, losses  # one full batch, six steps: it must learn
    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(saved) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    trained = dict(trainer.model.named_parameters())
    assert all(torch.equal(saved[k], trained[k].detach()) for k in saved)
    from llava.model.checkpoint import read_shard, weight_files

    base_lm = {k: v for f in weight_files(base) for k, v in read_shard(f).items()}
    assert torch.equal(trained["lm_head.weight"].detach(), base_lm["lm_head.weight"])  # only the projector moves
    cfg = json.load(open(out / "config.json"))
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["tune_mm_mlp_adapter"] is True

    args = parse_args(stage_args(base, data, tmp_path / "ft", 2, "--pretrain_mm_mlp_adapter",
                                 str(out / "mm_projector.bin")))
    model, _, _ = build_model(args, torch.device("cpu"))
    state = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_stage2_checkpoint_loads_with_the_same_logits(base, data, tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.train.train import train

    out = tmp_path / "finetune"
    trainer = train(stage_args(base, data, out, 2, "--per_device_train_batch_size", "4", "--max_steps", "2",
                               "--learning_rate", "1e-3", "--save_strategy", "no", "--gradient_checkpointing", "True"))
    tokenizer, loaded, processor, _ = load_pretrained_model(str(out), device="cpu", torch_dtype="float32")
    batch = D.DataCollatorForSupervisedDataset(trainer.tokenizer)([trainer.dataset[i] for i in (0, 1, 8)])
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"])
    trainer.model.eval()
    with torch.no_grad():
        ref = trainer.model(**kwargs).logits
        got = loaded(**kwargs).logits
    assert torch.equal(ref, got)
    assert tokenizer("What color").input_ids == trainer.tokenizer("What color").input_ids
    from safetensors.torch import load_file

    assert not any(k.startswith("model.vision_tower") for k in load_file(out / "model.safetensors"))


def test_gradient_checkpointing_gives_the_same_gradients(base, data, tmp_path):
    from llava.train.train import build_model, parse_args

    args = parse_args(stage_args(base, data, tmp_path, 2))
    model, tok, _ = build_model(args, torch.device("cpu"))
    ds = D.LazySupervisedDataset(args.data_path, tok, D.DataArguments(
        args.data_path, args.image_folder, "pad", "v1", False, model.get_vision_tower().image_processor))
    batch = D.DataCollatorForSupervisedDataset(tok)([ds[i] for i in (0, 8)])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.model.gradient_checkpointing = flag
        model(**batch).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads, strict=True))


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_resume_reaches_the_uninterrupted_weights(base, data, tmp_path):
    from llava.train.train import train

    extra = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--num_train_epochs", "2",
             "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.2",
             "--group_by_modality_length", "True", "--save_steps", "3", "--weight_decay", "0.1"]
    straight = train(stage_args(base, data, tmp_path / "a", 2, *extra))
    assert straight.total_steps == 6  # 10 samples, 5 batches of 2, 3 steps of 2 micro-batches per epoch
    train(stage_args(base, data, tmp_path / "b", 2, *extra), stop_at=4)  # dies after step 4: checkpoint-3 is there
    assert sorted(os.listdir(tmp_path / "b")).count("checkpoint-3") == 1
    resumed = train(stage_args(base, data, tmp_path / "b", 2, *extra))  # picks checkpoint-3 up by itself
    assert resumed.global_step == 6
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_b = [json.loads(x)["step"] for x in open(tmp_path / "b" / "train_log.jsonl")]
    assert log_b == [1, 2, 3, 4, 5, 6]  # the killed run's step 4 was redone from checkpoint-3; its line replaced


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kw)


def test_two_processes_equal_one_with_accumulation(base, data, tmp_path):
    # Batch k goes to rank k mod 2 and DDP averages the gradients: the same as one process accumulating both.
    common = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
              "--save_strategy", "no"]
    ddp = _run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "llava.train.train", *stage_args(base, data, tmp_path / "ddp", 1, *common)])
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    from llava.train.train import train

    train(stage_args(base, data, tmp_path / "one", 1, *common, "--gradient_accumulation_steps", "2"))
    a = torch.load(tmp_path / "ddp" / "mm_projector.bin", weights_only=True)
    b = torch.load(tmp_path / "one" / "mm_projector.bin", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.equal(a["model.mm_projector.0.weight"], torch.zeros_like(a["model.mm_projector.0.weight"]))


def test_deepspeed_zero2_equals_plain_pytorch(base, data, tmp_path):
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        pytest.skip(f"DeepSpeed is not installed ({err}); pip install -e '.[train]' to test ZeRO-2 on the CPU")
    common = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
              "--save_strategy", "no"]
    ds = _run_cli([sys.executable, "-m", "llava.train.train", "--deepspeed", "scripts/zero2.json",
                   *stage_args(base, data, tmp_path / "ds", 1, *common)])
    assert ds.returncode == 0, ds.stderr[-2000:]
    from llava.train.train import train

    train(stage_args(base, data, tmp_path / "pt", 1, *common))
    a = torch.load(tmp_path / "ds" / "mm_projector.bin", weights_only=True)
    b = torch.load(tmp_path / "pt" / "mm_projector.bin", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line each


@pytest.mark.parametrize("extra, message", [
    (["--lora_enable", "True"], "error: --lora_enable: LoRA training is not supported"),
    (["--bits", "4"], "error: --bits 4: quantized"),
    (["--fp16", "True"], "error: --fp16"),
    (["--prune-method", "entropy"], "error: --prune-method: training with visual-token pruning on is not supported"),
    (["--mm_use_im_start_end", "True"], "error: --mm_use_im_start_end True is not supported"),
    (["--lr_scheduler_type", "polynomial"], "error: --lr_scheduler_type 'polynomial' is not supported"),
    (["--model_max_length", "500"], "error: --model_max_length 500 leaves no room"),
    (["--version", "llama_2"], "error: --version 'llama_2' is not supported for training"),
    (["--pretrain_mm_mlp_adapter", "nowhere.bin"], "error: --pretrain_mm_mlp_adapter 'nowhere.bin': no such file"),
])
def test_bad_flags_are_one_line_errors(base, data, tmp_path, capsys, extra, message):
    from llava.train.train import main
    from llava.utils import call_cli

    assert call_cli(main, stage_args(base, data, tmp_path, 2, *extra)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(message), err


def test_a_config_that_turns_pruning_on_is_refused(base, data, tmp_path, capsys):
    import shutil

    from llava.train.train import main
    from llava.utils import call_cli

    model = tmp_path / "pruned"
    shutil.copytree(base, model)
    cfg = json.load(open(model / "config.json"))
    cfg["prune_method"] = "entropy"
    (model / "config.json").write_text(json.dumps(cfg))
    argv = stage_args(base, data, tmp_path / "o", 2)
    argv[argv.index(base)] = str(model)
    assert call_cli(main, argv) == 2
    assert "turns visual-token pruning on (prune_method)" in capsys.readouterr().err


def test_ignored_flags_print_a_note(base, data, tmp_path, capsys):
    from llava.train.train import parse_args

    parse_args(stage_args(base, data, tmp_path, 2, "--report_to", "wandb", "--lazy_preprocess", "True"))
    err = capsys.readouterr().err
    assert "note: --report_to wandb: ignored" in err and "note: --lazy_preprocess: ignored" in err
