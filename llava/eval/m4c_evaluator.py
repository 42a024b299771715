"""TextVQA answer normalisation (the EvalAI / M4C rules) and the 10-annotator soft accuracy.

The published TextVQA numbers come from these exact rules, quirks included, so they are reproduced
faithfully rather than fixed:

* commas are deleted in the first step, so the digit-comma-digit rule of the punctuation step can only
  fire when `process_punctuation` is called on its own;
* the period regex has a typo'd lookbehind (`(?!<=\\d)` is a negative lookahead for the literal text
  "<=" followed by a digit, not a lookbehind), and `re.UNICODE` (== 32) was passed where `count`
  goes, so at most 32 periods are removed per answer;
* the contraction table is applied after lower-casing, so its capitalised keys ("Im", "Ive") never match,
  and it maps "somebody'd" to "somebodyd".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# The original passed re.UNICODE positionally into re.sub's `count` slot; re.UNICODE == 32.
PERIOD_STRIP_COUNT = int(re.UNICODE)


class EvalAIAnswerProcessor:
    """Normalise a free-form answer the way the EvalAI VQA/TextVQA server does."""

    CONTRACTIONS = {
        "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
        "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
        "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
        "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
        "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
        "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
        "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
        "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
        "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
        "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
        "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
        "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
        "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
        "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
        "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
        "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
        "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
        "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
        "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
        "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
        "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
        "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
        "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
        "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
        "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
        "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
        "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
        "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
        "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
        "youll": "you'll", "youre": "you're", "youve": "you've",
    }
    NUMBER_MAP = {
        "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
        "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
    }
    ARTICLES = frozenset({"a", "an", "the"})
    # Kept verbatim, typo included: see the module docstring.
    PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
    COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
    PUNCTUATIONS = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
                    "`", ",", "?", "!")

    def word_tokenize(self, word: str) -> str:
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text: str) -> str:
        out_text = in_text
        # Both tests look at the *input* text, not the text being rewritten, as in the original.
        digit_comma_digit = self.COMMA_STRIP.search(in_text) is not None
        for p in self.PUNCTUATIONS:
            if (p + " " in in_text or " " + p in in_text) or digit_comma_digit:
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.PERIOD_STRIP.sub("", out_text, count=PERIOD_STRIP_COUNT)

    def process_digit_article(self, in_text: str) -> str:
        words = []
        for word in in_text.lower().split():
            word = self.NUMBER_MAP.get(word, word)
            if word not in self.ARTICLES:
                words.append(word)
        return " ".join(self.CONTRACTIONS.get(w, w) for w in words)

    def __call__(self, item: str) -> str:
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


class TextVQAAccuracyEvaluator:
    """VQA soft accuracy over 10 human answers: min(1, matches/3), averaged over leave-one-out subsets."""

    NUM_ANSWERS = 10

    def __init__(self) -> None:
        self.answer_processor = EvalAIAnswerProcessor()

    def _compute_answer_scores(self, raw_answers: Sequence[str]) -> dict[str, float]:
        answers = [self.answer_processor(a) for a in raw_answers]
        if len(answers) != self.NUM_ANSWERS:
            raise ValueError(
                f"TextVQA needs exactly {self.NUM_ANSWERS} ground-truth answers, got {len(answers)}"
            )
        scores = {}
        for unique in set(answers):
            total_matches = answers.count(unique)
            # Leaving out one of the matching answers removes one match; leaving out any other answer
            # keeps them all. Summing over the 10 subsets this way equals the explicit loop.
            acc = 0.0
            for left_out in answers:
                matches = total_matches - (left_out == unique)
                acc += min(1.0, matches / 3)
            scores[unique] = acc / len(answers)
        return scores

    def score(self, pred_answer: str, gt_answers: Sequence[str]) -> float:
        return self._compute_answer_scores(gt_answers).get(self.answer_processor(pred_answer), 0.0)

    def eval_pred_list(self, pred_list: Iterable[dict]) -> float:
        """Mean accuracy (0..1) over entries with `pred_answer` and `gt_answers`; 0.0 for an empty list."""
        scores = [self.score(e["pred_answer"], e["gt_answers"]) for e in pred_list]
        return sum(scores) / len(scores) if scores else 0.0
