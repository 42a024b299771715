"""LLaVA's training data: the JSON formats, the prompt templates and the label masks, as LLaVA's train.py builds them.

Data files are a JSON list of samples ``{"id", "image" (optional), "conversations": [{"from": "human" | "gpt",
"value"}, ...]}``: LLaVA-Pretrain's blip_laion_cc_sbu_558k.json (one caption turn per image) and
llava_v1_5_mix665k.json (multi-turn instructions; samples without ``image`` are text-only).

The labels are those LLaVA trains on, token for token:

- ``plain`` (stage 1): ``<image>`` + caption + ``"\\n"``; the BOS and the image marker are masked, the caption and
  the newline are supervised (the first turn's text is dropped, as LLaVA does).
- ``v1`` (stage 2): the Vicuna conversation, split into rounds on ``</s>``; in each round the instruction up to
  ``"ASSISTANT: "`` is masked and the answer with its ``</s>`` is supervised. Token counts come from tokenizing
  each round on its own (its BOS stands for the ``</s>`` of the full text), the instruction's minus 2; after the
  first round both counts drop by one when the tokenizer is not ``legacy`` (tokenizers >= 0.14), LLaVA's
  correction for Vicuna's tokenizer. When the counts do not add up to the sample's length, the whole sample is
  masked and a warning is printed (LLaVA's "tokenization mismatch").
- ``model_max_length``: text-only samples are cut by the tokenizer, every sample by the collator, and the
  spliced sequence (image features included) by the model (``tokenizer_model_max_length``).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.mm_utils import tokenizer_image_token


def _tokenizers_at_least_0_14() -> bool:
    import tokenizers
    from packaging import version

    return version.parse(tokenizers.__version__) >= version.parse("0.14")


def conversation_for(version: str) -> Conversation:
    """The template LLaVA's train.py selects for ``--version``: a known name, else vicuna_v1. Only the two
    styles LLaVA-1.5 trains with (``plain`` and the ``v1`` family) have label masks here."""
    conv = conv_templates.get(version, conv_templates["vicuna_v1"]).copy()
    if version in ("v0", "v0.5") or not (conv.sep_style == SeparatorStyle.PLAIN or conv.version.startswith("v1")):
        raise NotImplementedError(f"--version {version!r} is not supported for training; LLaVA-1.5 trains with "
                                  "'plain' (stage 1) and 'v1' (stage 2)")
    return conv


def preprocess_multimodal(sources: list, mm_use_im_start_end: bool = False, conv_version: str = "v1") -> list:
    """Each turn holding ``<image>``: the marker moved to the front on a line of its own (LLaVA's layout)."""
    for source in sources:
        for sentence in source:
            if DEFAULT_IMAGE_TOKEN in sentence["value"]:
                text = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                sentence["value"] = (DEFAULT_IMAGE_TOKEN + "\n" + text).strip()
                if "mmtag" in conv_version:
                    sentence["value"] = sentence["value"].replace(DEFAULT_IMAGE_TOKEN,
                                                                  "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
            if mm_use_im_start_end:
                sentence["value"] = sentence["value"].replace(
                    DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    return sources


def preprocess_plain(sources: list, tokenizer, conv: Conversation | None = None) -> dict:
    """Stage 1: ``<image>`` + caption + separator; labels on the caption and the separator only."""
    conv = conv or conv_templates["plain"]
    input_ids, labels = [], []
    for source in sources:
        if len(source) != 2 or DEFAULT_IMAGE_TOKEN not in source[0]["value"]:
            raise ValueError("the plain template takes samples of two turns, an image then its caption "
                             f"(LLaVA-Pretrain's format); got {len(source)} turn(s)"
                             + ("" if len(source) != 2 else " without <image> in the first"))
        source[0]["value"] = DEFAULT_IMAGE_TOKEN
        ids = tokenizer_image_token(source[0]["value"] + source[1]["value"] + conv.sep, tokenizer, return_tensors="pt")
        target = ids.clone()
        target[: len(tokenizer_image_token(source[0]["value"], tokenizer))] = IGNORE_INDEX
        input_ids.append(ids)
        labels.append(target)
    return dict(input_ids=input_ids, labels=labels)


def _render(source: list, conv: Conversation) -> str:
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    unknown = sorted({s["from"] for s in source} - set(roles))
    if unknown:
        raise ValueError(f"turns must come 'from' 'human' or 'gpt'; got {', '.join(map(repr, unknown))}")
    if roles[source[0]["from"]] != conv.roles[0]:
        source = source[1:]  # LLaVA drops a first turn that is not the human's
    conv = conv.copy()
    conv.messages = []
    for j, sentence in enumerate(source):
        role = roles[sentence["from"]]
        if role != conv.roles[j % 2]:
            raise ValueError("turns must alternate human, gpt, human, ...; turn "
                             f"{j} is {sentence['from']!r}")
        conv.append_message(role, sentence["value"])
    return conv.get_prompt()


def preprocess_v1(sources: list, tokenizer, has_image: bool = False, conv: Conversation | None = None,
                  legacy: bool | None = None, sample_id: Any = None) -> dict:
    """Stage 2 (``v1``): the Vicuna conversation with every instruction masked (see the module docstring).

    ``legacy``: the tokenizer's ``legacy`` flag (default: read from it), which decides LLaVA's per-round offset.
    """
    conv = conv or conv_templates["vicuna_v1"]
    if conv.sep_style != SeparatorStyle.TWO:
        raise ValueError(f"preprocess_v1 needs a two-separator template (v1); got {conv.sep_style.name}")
    conversations = [_render(source, conv) for source in sources]
    if has_image:
        input_ids = torch.stack([tokenizer_image_token(p, tokenizer, return_tensors="pt") for p in conversations])
    else:
        input_ids = tokenizer(conversations, return_tensors="pt", padding="longest",
                              max_length=tokenizer.model_max_length, truncation=True).input_ids
    targets = input_ids.clone()
    if legacy is None:
        legacy = bool(getattr(tokenizer, "legacy", True))
    shift = not legacy and _tokenizers_at_least_0_14()

    def count(text: str) -> int:
        return len(tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)

    sep = conv.sep + conv.roles[1] + ": "
    for conversation, target in zip(conversations, targets, strict=True):
        total_len = int(target.ne(tokenizer.pad_token_id).sum())
        cur_len = 1  # the BOS
        target[:cur_len] = IGNORE_INDEX
        for i, rou in enumerate(conversation.split(conv.sep2)):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len = count(rou)
            instruction_len = count(parts[0] + sep) - 2
            if i != 0 and shift:
                round_len -= 1
                instruction_len -= 1
            target[cur_len:cur_len + instruction_len] = IGNORE_INDEX
            cur_len += round_len
        target[cur_len:] = IGNORE_INDEX
        if cur_len < tokenizer.model_max_length and cur_len != total_len:
            target[:] = IGNORE_INDEX
            what = f" in sample {sample_id!r}" if sample_id is not None else ""
            print(f"WARNING: tokenization mismatch{what}: {cur_len} vs. {total_len}. (ignored)", file=sys.stderr)
    return dict(input_ids=input_ids, labels=targets)


def preprocess(sources: list, tokenizer, has_image: bool, conv: Conversation, sample_id: Any = None) -> dict:
    if conv.sep_style == SeparatorStyle.PLAIN:
        return preprocess_plain(sources, tokenizer, conv)
    return preprocess_v1(sources, tokenizer, has_image=has_image, conv=conv, sample_id=sample_id)


@dataclass
class DataArguments:
    data_path: str
    image_folder: str | None = None
    image_aspect_ratio: str = "square"
    version: str = "v1"
    mm_use_im_start_end: bool = False
    image_processor: Any = None


def load_samples(data_path: str) -> list[dict]:
    """The JSON list of samples, checked for LLaVA's format; every error names the file and the sample."""
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"--data_path {data_path!r}: no such file")
    try:
        with open(data_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{data_path} is not valid JSON: {err}") from err
    if not isinstance(data, list) or not data:
        raise ValueError(f"{data_path} must hold a non-empty JSON list of samples (LLaVA's format)")
    for n, sample in enumerate(data):
        where = f"{data_path}: sample {n}" + (f" (id {sample.get('id')!r})" if isinstance(sample, dict) else "")
        convs = sample.get("conversations") if isinstance(sample, dict) else None
        if not isinstance(convs, list) or not convs:
            raise ValueError(f"{where} has no 'conversations' list")
        for turn in convs:
            if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(
                    turn.get("value"), str):
                raise ValueError(f"{where}: every turn must be {{'from': str, 'value': str}}")
        if "image" in sample and not isinstance(sample["image"], str):
            raise ValueError(f"{where}: 'image' must be a file name (several images per sample are not supported)")
    return data


class LazySupervisedDataset(torch.utils.data.Dataset):
    """LLaVA's dataset: samples are tokenized and their images read when they are fetched."""

    def __init__(self, data_path: str, tokenizer, data_args: DataArguments, model_config=None):
        self.samples = load_samples(data_path)
        self.tokenizer = tokenizer
        self.args = data_args
        self.conv = conversation_for(data_args.version)
        self.model_config = model_config
        with_image = [s["image"] for s in self.samples if "image" in s]
        if with_image:
            if data_args.image_folder is None:
                raise ValueError(f"{data_path} has samples with images; pass --image_folder")
            missing = [f for f in with_image if not os.path.isfile(os.path.join(data_args.image_folder, f))]
            if missing:
                raise FileNotFoundError(f"{len(missing)} image(s) of {data_path} are not in --image_folder "
                                        f"{data_args.image_folder!r}, e.g. {', '.join(missing[:3])}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Words per sample, plus 128 for an image (LLaVA's estimate)."""
        return [sum(len(c["value"].split()) for c in s["conversations"]) + (128 if "image" in s else 0)
                for s in self.samples]

    @property
    def modality_lengths(self) -> list[int]:
        """Words per sample, negative for text-only samples: what --group_by_modality_length groups by."""
        out = []
        for s in self.samples:
            n = sum(len(c["value"].split()) for c in s["conversations"])
            out.append(n if "image" in s else -n)
        return out

    def __getitem__(self, i: int) -> dict:
        from llava.mm_utils import load_image, process_images

        sample = self.samples[i]
        sources = copy.deepcopy([sample["conversations"]])
        image = None
        if "image" in sample:
            pil = load_image(os.path.join(self.args.image_folder, sample["image"]))
            cfg = _AspectRatio(self.args.image_aspect_ratio)
            image = process_images([pil], self.args.image_processor, cfg)[0]
            sources = preprocess_multimodal(sources, self.args.mm_use_im_start_end, self.conv.version)
        try:
            out = preprocess(sources, self.tokenizer, image is not None, self.conv, sample_id=sample.get("id", i))
        except ValueError as err:
            raise ValueError(f"{self.args.data_path}: sample {i} (id {sample.get('id')!r}): {err}") from err
        return dict(input_ids=out["input_ids"][0], labels=out["labels"][0], image=image)


@dataclass
class _AspectRatio:
    image_aspect_ratio: str


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-padded batches as LLaVA's collator makes them (ids with the pad id, labels with IGNORE_INDEX, both cut
    to model_max_length; the mask is ``ids != pad``). ``images`` holds the images of the samples that have one, in
    order (LLaVA gives text-only samples a zero image that its model skips; here they have none)."""

    tokenizer: Any

    def __call__(self, instances: list[dict]) -> dict:
        pad = self.tokenizer.pad_token_id
        limit = self.tokenizer.model_max_length
        input_ids = torch.nn.utils.rnn.pad_sequence([x["input_ids"] for x in instances], batch_first=True,
                                                    padding_value=pad)[:, :limit]
        labels = torch.nn.utils.rnn.pad_sequence([x["labels"] for x in instances], batch_first=True,
                                                 padding_value=IGNORE_INDEX)[:, :limit]
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=input_ids.ne(pad))
        # An image whose marker the cut removed is dropped with it: the model splices one image per marker.
        images = [x["image"] for x, row in zip(instances, input_ids, strict=True)
                  if x.get("image") is not None and bool((row == IMAGE_TOKEN_INDEX).any())]
        if images:
            same = all(im.shape == images[0].shape for im in images)
            batch["images"] = torch.stack(images) if same else images
        return batch
