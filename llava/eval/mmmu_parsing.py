"""MMMU's official answer parsing and matching (MMMU-Benchmark/MMMU, mmmu/utils/eval_utils.py at bb0b95a).

Multiple choice, `parse_multi_choice(response, options)`:
  strip each of  , . ! ? ; : '  from both ends, in that order, then pad the text with one space on
  each side; candidates are the letters written "(X)"; if none, the letters standing alone (" X ");
  if none and the text has more than 5 words, the options whose text occurs in it (case-insensitive).
  Several candidates: the one whose mark (or option text) occurs last. None: MMMU picks a letter at
  random; here the answer is unmatched (None) and counts as wrong.
Open questions, `parse_open(response)` then `open_correct(gold, preds)`:
  lower-case the stripped text (and strip "." from its ends); split it into lines; in each line keep
  the shortest tail after one of "could be ", "so ", "is ", "thus ", "therefore ", "final ",
  "answer ", "result " (and "=" in the last line), unless that tail is bare punctuation; no tail at
  all: the whole text. Add every number in the tails (with thousands commas, scientific, plain), then
  normalise each: a number (commas removed) becomes a float rounded to 2 places, other text is
  lower-cased and a single character c becomes " c" and "c ". Correct when a gold number equals a
  predicted number, or a gold string is a substring of a predicted string.
"""

from __future__ import annotations

import re

_STRIP_CHARS = (",", ".", "!", "?", ";", ":", "'")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
# MMMU splits on ". " before a capital, but after lower-casing only the newlines ever split.
_SENTENCES = re.compile(r"\.\s(?=[A-Z])|\n")
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def parse_multi_choice(response: str, options: dict[str, str]) -> str | None:
    """The chosen letter, or None where MMMU would guess at random."""
    for ch in _STRIP_CHARS:
        response = response.strip(ch)
    response = f" {response} "
    bracketed = [c for c in options if f"({c})" in response]
    candidates = bracketed or [c for c in options if f" {c} " in response]
    by_content = False
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, text in options.items() if text.lower() in response.lower()]
        by_content = bool(candidates)
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    if by_content:
        positions = [response.lower().rfind(options[c].lower()) for c in candidates]
    elif bracketed:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        positions = [response.rfind(f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))]  # the first of equal maxima, as numpy's argmax


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize(text: str) -> list:
    """MMMU's normalize_str: [rounded float] for a number, else the lower-cased text (a lone character
    padded with a space on either side, so it only matches as a word)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


def extract_numbers(text: str) -> list[str]:
    return _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    lines = _SENTENCES.split(response)
    keys = []
    for n, line in enumerate(lines):
        indicators = _INDICATORS + (("=",) if n == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                # An empty tail is falsy in MMMU's check, so the next indicator's tail replaces it.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list:
    """MMMU's parse_open_response: the normalised candidate answers (strings and floats), deduplicated."""
    keys = _key_responses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    preds: list = []
    for candidate in candidates:
        for value in normalize(candidate):
            if value not in preds:
                preds.append(value)
    return preds


def open_correct(gold: str | list[str], preds: list) -> bool:
    """MMMU's eval_open."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm_golds = [value for g in golds for value in normalize(g)]
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm_golds):
                return True
        elif pred in norm_golds:
            return True
    return False
