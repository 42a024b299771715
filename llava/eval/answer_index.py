"""One rule for the answers a scorer reads: duplicate, unknown and missing answers, and empty files.

Every scorer (`llava/eval/eval_*.py`) reads its answers file through `index_answers`, under the scorer's
own question key: `question_id` for most; (index, round) for MMBench; the problem id for ScienceQA;
(image id, question) for TextVQA; (question_id, question) for MME, whose ids name an image.

- **Duplicate.** Two answer lines with the same key are an error naming the file, both line numbers and
  the key. The drivers write each answer once (a resumed run skips what is already answered), so a second
  line for one question means two runs wrote into one file or answer files were concatenated; even
  identical lines are refused, since they show a second writer. The fix is to rerun into a fresh answers
  file, or to merge chunk files with `python -m llava.eval.driver merge`.
- **Unknown.** An answer whose key is not one of the benchmark's questions is an error naming file:line
  and the key: the answers come from another question file or another benchmark.
- **Missing.** A scored question without an answer counts as wrong, and every denominator is all the
  scored questions, so a partial run never scores above what the complete run with the same answers
  would. One warning line says "N of M <benchmark> questions have no answer in FILE; they count as
  wrong", and the scorer's summary JSON holds N as `missing`. (How "wrong" enters a metric that is not
  an accuracy is each scorer's to state: POPE takes a missing answer as the opposite of its label.)
- **Outside the scored set.** Where a scorer scores a subset of its question file (GQA's balanced
  questions, one ScienceQA split, MMBench's unrotated round 0), answers to the other questions of that
  file are not errors: they are ignored, with a warning and their count as `ignored` in the summary.
- **Empty.** An answers file with no answers at all is an error ("holds no answers"), not a score of 0;
  so is one whose every answer lies outside the scored set.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Hashable, Iterable, Iterator, Mapping

from llava.eval import EvalInputError, warn

DUPLICATE_WHY = (
    "the drivers write each answer once, so a second answer for one question means two runs wrote into this "
    "file or answer files were concatenated (identical lines too: they show a second writer). Rerun into a "
    "fresh answers file, or merge chunk files with `python -m llava.eval.driver merge`"
)
UNKNOWN_WHY = (
    "An answer to a question the benchmark does not have means the wrong answers file or another benchmark's "
    "files; score answers against the question file they were generated from"
)


def question_id(key) -> str:
    """The default way a key is named in messages."""
    return f"question_id {key!r}"


class AnswerIndex(Mapping):
    """key -> answer record, in file order, for one answers file; built by `index_answers`."""

    def __init__(self, path: str, benchmark: str, records: dict, lines: dict, ignored: int) -> None:
        self.path = path
        self.benchmark = benchmark
        self._records = records
        self._lines = lines
        self.ignored = ignored  # answers to questions of the question file outside the scored set

    def __getitem__(self, key) -> dict:
        return self._records[key]

    def __iter__(self) -> Iterator:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def line(self, key) -> int:
        """The answer's line number in the answers file."""
        return self._lines[key]

    def missing(self, questions: Iterable) -> list:
        """The scored questions (keys) without an answer, in the order given; warns once when there are any."""
        questions = list(questions)
        absent = [q for q in questions if q not in self._records]
        if absent:
            warn(f"{len(absent)} of {len(questions)} {self.benchmark} questions have no answer in {self.path}; "
                 "they count as wrong.")
        return absent


def index_answers(
    path: str,
    records: list[tuple[int, dict]],
    *,
    benchmark: str,
    key: Callable[[dict], Hashable],
    known: Container | None,
    unknown: Callable[[Hashable, dict], str],
    scored: Container | None = None,
    scored_name: str = "",
    describe: Callable[[Hashable], str] = question_id,
    driver: str = "the benchmark's driver",
) -> AnswerIndex:
    """Index an answers file's (line number, record) pairs by `key`, applying the rule of the module docstring.

    key(record) gives the scorer's question key; it raises ValueError (message without the file and line)
    for a line that names no question it can read. `known` holds the benchmark's question keys (None: not
    checkable, as for an MM-Vet submission written without mm-vet.json); `unknown(key, record)` says what
    an unknown answer matched nothing in. `scored`, a subset of `known`, is the set that is scored (None:
    all of `known`); answers in `known` but not in `scored` are ignored and counted (`scored_name` names
    the scored set in messages). `describe(key)` names a key in messages; `benchmark` names the benchmark
    and `driver` the module that writes its answers.
    """
    if not records:
        raise EvalInputError(f"{path} holds no answers; run {driver} first, or pass the answers file it wrote.")
    by_key: dict = {}
    lines: dict = {}
    ignored = 0
    for lineno, record in records:
        try:
            k = key(record)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise EvalInputError(f"{path}:{lineno}: {err}") from None
        if known is not None and k not in known:
            raise EvalInputError(f"{path}:{lineno}: {unknown(k, record)}. {UNKNOWN_WHY}.")
        if k in lines:
            raise EvalInputError(f"{path}:{lines[k]} and {path}:{lineno} both answer {describe(k)}: {DUPLICATE_WHY}.")
        lines[k] = lineno
        if scored is not None and k not in scored:
            ignored += 1
            continue
        by_key[k] = record
    if scored is not None and not by_key:
        raise EvalInputError(f"{path} holds no answers to the {scored_name}: its {ignored} answers are all to "
                             f"other questions; score the {scored_name} with answers to them.")
    if ignored:
        warn(f"{ignored} answers in {path} are to questions outside the {scored_name}; they are ignored.")
    return AnswerIndex(path, benchmark, by_key, lines, ignored)
