"""Conversation templates that build prompts byte for byte as LLaVA does.

`conv_templates[mode].copy()` gives a fresh conversation; `append_message(role, text)` adds turns (a None
text leaves the turn open for the model), and `get_prompt()` renders them in the template's separator style.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER


class SeparatorStyle(Enum):
    SINGLE = auto()
    TWO = auto()
    MPT = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


def _text(message):
    # A turn may carry (text, image, mode) as in LLaVA's demo; only the text goes into the prompt.
    return message[0] if isinstance(message, tuple) else message


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    messages: list
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def _messages_for_prompt(self):
        messages = [list(m) for m in self.messages]
        if messages and isinstance(messages[0][1], tuple):
            # The demo passes the image with the first turn; the image marker then goes first, as in LLaVA.
            role, (text, *_rest) = messages[0]
            text = text.replace("<image>", "").strip()
            if "mmtag" in self.version:
                messages[0] = [role, text]
                messages[:0] = [[self.roles[0], "<Image><image></Image>"], [self.roles[1], "Received."]]
            else:
                messages[0] = [role, "<image>\n" + text]
        return messages

    def get_prompt(self) -> str:
        messages = self._messages_for_prompt()
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}: {_text(message)}{self.sep}" if message else f"{role}:"
            return out
        if style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                out += f"{role}: {_text(message)}{seps[i % 2]}" if message else f"{role}:"
            return out
        if style == SeparatorStyle.MPT:
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}{_text(message)}{self.sep}" if message else role
            return out
        if style == SeparatorStyle.LLAMA_2:
            out = ""
            for i, (role, message) in enumerate(messages):
                if i == 0 and (not message or role != self.roles[0]):
                    raise ValueError("a llama_2 conversation must start with a non-empty user turn")
                if not message:
                    continue
                text = _text(message)
                if i == 0 and self.system:  # LLaVA wraps a non-empty system prompt only (mistral_instruct has none)
                    text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" + text
                if i % 2 == 0:
                    out += self.sep + f"[INST] {text} [/INST]"
                else:
                    out += " " + text + " " + self.sep2
            # LLaVA strips the leading separator characters (str.lstrip semantics, a character set).
            return out.lstrip(self.sep)
        if style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2)
            out = self.system
            for i, (_role, message) in enumerate(messages):
                if message:
                    out += _text(message) + (seps[i % 2] or "")
            return out
        raise ValueError(f"invalid separator style: {style}")

    def append_message(self, role: str, message) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[r, m] for r, m in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def dict(self) -> dict:
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[r, _text(m)] for r, m in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

conv_vicuna_v1 = Conversation(
    system=_VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], version="v1",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llava_v1 = Conversation(
    system=_HUMAN_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], version="v1",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llava_v1_mmtag = Conversation(
    system=_MMTAG_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], version="v1_mmtag",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llava_v0 = Conversation(
    system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), messages=[], sep_style=SeparatorStyle.SINGLE, sep="###",
)
conv_llama_2 = Conversation(
    system=_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], version="llama_v2",
    sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>",
)
conv_llava_llama_2 = Conversation(
    system=_LLAVA_LLAMA_2_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], version="llama_v2",
    sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>",
)
conv_mpt = Conversation(
    system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), messages=[], version="mpt",
    sep_style=SeparatorStyle.MPT, sep="<|im_end|>",
)
# LLaVA-1.6: llava-v1.6-mistral-7b (Llama-2 style turns, no system prompt) and llava-v1.6-34b (ChatML).
conv_mistral_instruct = Conversation(
    system="", roles=("USER", "ASSISTANT"), messages=[], version="llama_v2",
    sep_style=SeparatorStyle.LLAMA_2, sep="", sep2="</s>",
)
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), messages=[], version="mpt",
    sep_style=SeparatorStyle.MPT, sep="<|im_end|>",
)
conv_llava_plain = Conversation(
    system="", roles=("", ""), messages=[], sep_style=SeparatorStyle.PLAIN, sep="\n",
)

conv_templates: dict[str, Conversation] = {
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
    "mistral_instruct": conv_mistral_instruct,
    "chatml_direct": conv_chatml_direct,
    "mistral_direct": conv_chatml_direct,
}
default_conversation = conv_vicuna_v1


def get_conv_template(mode: str) -> Conversation:
    """A fresh copy of template `mode`, or an error that lists the known modes."""
    if mode not in conv_templates:
        known = ", ".join(sorted(conv_templates))
        raise ValueError(f"unknown --conv-mode {mode!r}; known modes: {known}")
    return conv_templates[mode].copy()


def image_marker(mm_use_im_start_end: bool = False) -> str:
    """The text that stands for one image: ``<image>``, wrapped in ``<im_start>``/``<im_end>`` when the
    checkpoint was trained so (``mm_use_im_start_end`` in its config)."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def build_prompt(question: str, conv_mode: str, n_images: int = 1, mm_use_im_start_end: bool = False) -> str:
    """LLaVA's prompt for one question: the image markers, then the conversation template.

    As LLaVA's ``run_llava``: an ``<image-placeholder>`` in the question marks where the images go;
    otherwise the markers come first, one line per image (LLaVA's layout for one image). Every tool that
    prompts the model (``run_llava``, the eval drivers, the ECL tool, the benchmarks) builds its prompt here.
    """
    marker = image_marker(mm_use_im_start_end)
    if IMAGE_PLACEHOLDER in question:
        question = question.replace(IMAGE_PLACEHOLDER, marker)
    elif n_images:
        question = (marker + "\n") * n_images + question
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
