"""Prompt building, image preprocessing and tokenisation, checked against hand-built expectations."""

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates, get_conv_template
from llava.mm_utils import expand2square, get_model_name_from_path, process_images, tokenizer_image_token

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


def test_vicuna_v1_prompt_exact():
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nIs it red?\nAnswer the question using a single word or phrase.")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == (
        VICUNA_SYSTEM + " USER: <image>\nIs it red?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )
    # a finished exchange ends the assistant turn with </s>, then the next user turn follows
    conv.messages[-1][1] = "Yes"
    conv.append_message(conv.roles[0], "Why?")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().endswith(" ASSISTANT: Yes</s>USER: Why? ASSISTANT:")


def test_other_templates_exact():
    conv = get_conv_template("llava_v1")
    conv.append_message("USER", "hi")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt().startswith("A chat between a curious human and")
    assert conv.get_prompt().endswith("to the human's questions. USER: hi ASSISTANT:")
    conv = get_conv_template("plain")
    conv.append_message("", "<image>\n")
    conv.append_message("", "a cat")
    assert conv.get_prompt() == "<image>\n\na cat"
    conv = get_conv_template("llava_llama_2")
    conv.append_message("USER", "hi")
    conv.append_message("ASSISTANT", "hello")
    assert conv.get_prompt() == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
        "<</SYS>>\n\nhi [/INST] hello </s>"
    )
    assert conv_templates["v1"] is conv_templates["vicuna_v1"]


def test_unknown_conv_mode_names_it():
    with pytest.raises(ValueError, match="--conv-mode 'vicuna_v9'.*vicuna_v1"):
        get_conv_template("vicuna_v9")


@pytest.mark.parametrize("size,box", [((40, 20), (0, 10, 40, 30)), ((20, 40), (10, 0, 30, 40)), ((30, 30), None)])
def test_expand2square_placement_and_fill(size, box):
    img = Image.new("RGB", size, (10, 200, 30))
    fill = (122, 116, 104)
    out = expand2square(img, fill)
    side = max(size)
    assert out.size == (side, side)
    px = out.load()
    for x in range(side):
        for y in range(side):
            inside = box is None or (box[0] <= x < box[2] and box[1] <= y < box[3])
            assert px[x, y] == ((10, 200, 30) if inside else fill)


def test_process_images_pads_with_clip_mean(loaded_tiny):
    _, model, proc, _ = loaded_tiny
    wide = Image.new("RGB", (336, 168), (255, 255, 255))
    px = process_images([wide], proc, model.config)
    assert px.shape == (1, 3, 336, 336)
    mean = torch.tensor(proc.image_mean)[:, None]
    std = torch.tensor(proc.image_std)[:, None]
    fill = torch.tensor([122, 116, 104]) / 255.0
    top_row = px[0, :, 0, :]  # the padding band above the image
    assert torch.allclose(top_row, ((fill[:, None] - mean) / std).expand_as(top_row), atol=1e-4)
    centre = px[0, :, 168, :]
    assert torch.allclose(centre, ((1 - mean) / std).expand_as(centre), atol=1e-4)


def test_tokenizer_image_token_matches_sentencepiece(loaded_tiny, tiny_llava):
    import os

    import sentencepiece as spm

    tok = loaded_tiny[0]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tiny_llava, "tokenizer.model"))
    prompt = VICUNA_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT:"
    before, after = prompt.split("<image>")
    expected = [1] + sp.encode(before) + [IMAGE_TOKEN_INDEX] + sp.encode(after)
    ids = tokenizer_image_token(prompt, tok)
    assert ids == expected
    assert sp.id_to_piece(ids[ids.index(IMAGE_TOKEN_INDEX) + 1]) == "▁"  # chunk-wise dummy prefix, as LLaVA
    two = tokenizer_image_token("<image>\n<image>\nhi", tok, return_tensors="pt")
    assert two.tolist() == [1, IMAGE_TOKEN_INDEX] + sp.encode("\n") + [IMAGE_TOKEN_INDEX] + sp.encode("\nhi")


def test_model_name_from_path():
    assert get_model_name_from_path("/ckpts/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("/x/llava-lora/checkpoint-500") == "llava-lora_checkpoint-500"
