"""VLMEvalKit's rule-based option extraction (`can_infer`), used for MMStar and AI2D.

The rules of vlmeval/utils/matching_util.py (open-compass/VLMEvalKit at e8e78f05), as run without the
VERBOSE environment variable:

can_infer_option(answer, choices):
  1. an answer containing "Failed to obtain answer via API" -> no match;
  2. an answer containing one of VLMEvalKit's refusal phrases -> "Z";
  3. replace each of  . ( ) [ ] , : ; ! * # { }  with a space and split on whitespace; if exactly one
     option letter occurs among the words, and its first occurrence is among the last four words, that
     letter; if no letter occurs but the word "Z" does -> "Z";
  4. otherwise "answer is X" / "correct answer is **X**" (any case; X one of A-D, upper-cased) when X
     is an option -> X;
  5. else no match.
can_infer_text(answer, choices), tried when can_infer_option gives no match: lower-case everything; an
  answer longer than twice the options' total length -> no match; otherwise, if exactly one option's
  text occurs in the answer, its letter.

"Z" is never a right answer; no match is where VLMEvalKit would ask an LLM judge (here: wrong, and
counted as unmatched).
"""

from __future__ import annotations

import re

_API_FAILURE = "Failed to obtain answer via API"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SPLIT_CHARS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# How near the end a lone option letter must be: its index must exceed len(words) - 5.
_TAIL_WORDS = 5


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    if _API_FAILURE in answer:
        return None
    if any(phrase in answer for phrase in _REFUSALS):
        return "Z"
    spaced = answer
    for ch in _SPLIT_CHARS:
        spaced = spaced.replace(ch, " ")
    words = spaced.split()
    present = [letter for letter in choices if letter in words]
    if len(present) == 1:
        letter = present[0]
        # A letter early in a long answer is more likely the article "A" or a label than the choice.
        if words.index(letter) > len(words) - _TAIL_WORDS:
            return letter
    elif not present and "Z" in words:
        return "Z"
    m = _ANSWER_IS.search(answer)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    hits = [letter for letter, text in choices.items() if text.lower() in answer]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter (or "Z") VLMEvalKit's exact matching takes from `answer`; None when it cannot tell."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)
