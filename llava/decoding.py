"""Token ids to text, exactly as official LLaVA decodes answers.

LLaVA decodes with transformers 4.37's slow `LlamaTokenizer`:
`tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()`. That drops the special ids, removes one
leading "▁" from the first piece (the tokenizer's own prefix space) and hands the pieces to SentencePiece.
transformers 5's tokenizers-backed `LlamaTokenizer` differs on byte-fallback pieces: a run of bytes that is not
valid UTF-8 becomes one U+FFFD per byte and the valid bytes inside the run are lost, where SentencePiece keeps
every well-formed character and gives U+FFFD only for the bytes that belong to none. So every answer is
decoded here, from the pieces, by SentencePiece's rules.

With `legacy=True` SentencePiece would also drop a leading space; the two settings differ only in leading
whitespace, which the `.strip()` of `decode_answer` removes, so answers are the same either way.
"""

from __future__ import annotations

import re

_SPACE = "\u2581"  # SentencePiece's "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


def decode_answer(tokenizer, ids) -> str:
    """The answer text of one row of generated ids, as LLaVA gives it (decoded, then stripped)."""
    return decode_ids(tokenizer, ids).strip()


def decode_ids(tokenizer, ids) -> str:
    """`ids` (a 1-D sequence) as transformers 4.37's slow LlamaTokenizer.decode(ids, skip_special_tokens=True)."""
    added = tokenizer.added_tokens_decoder
    skip = set(tokenizer.all_special_ids) | {i for i, tok in added.items() if tok.special}
    chunks: list[str] = []
    pieces: list[str] = []
    for i in (int(i) for i in ids):
        if i in skip:
            continue
        if i in added:
            # An added (non-special) token is its own chunk; the chunks are joined with spaces, as in 4.37.
            text = _pieces_to_text(tokenizer, pieces) if pieces else ""
            chunks += [text] if text else []
            chunks.append(added[i].content)
            pieces = []
            continue
        piece = tokenizer.convert_ids_to_tokens(i)
        if piece is not None:  # None: an id past the vocabulary (a padded embedding's spare row) has no text
            pieces.append(piece)
    if pieces:
        chunks.append(_pieces_to_text(tokenizer, pieces))
    return " ".join(chunks)


def _pieces_to_text(tokenizer, pieces: list[str]) -> str:
    """SentencePiece's decoding of `pieces` after 4.37 removed the first piece's "▁" (its prefix space)."""
    out: list[str] = []
    run = bytearray()  # consecutive byte-fallback pieces are decoded together
    for n, piece in enumerate(pieces):
        byte = _BYTE_PIECE.fullmatch(piece)
        if byte:
            run.append(int(byte.group(1), 16))
            continue
        if run:
            out.append(_utf8_like_sentencepiece(bytes(run)))
            run.clear()
        if n == 0 and piece.startswith(_SPACE):
            piece = piece[1:]
            # SentencePiece prints a piece it does not know as is, "▁" included (e.g. "▁▁" cut from "▁▁▁").
            if _SPACE in piece and tokenizer.convert_tokens_to_ids(piece) == tokenizer.unk_token_id:
                out.append(piece)
                continue
        out.append(piece.replace(_SPACE, " "))
    if run:
        out.append(_utf8_like_sentencepiece(bytes(run)))
    return "".join(out)


def _utf8_like_sentencepiece(data: bytes) -> str:
    """Each well-formed UTF-8 character as itself and every other byte as one U+FFFD, one byte at a time.

    Python's "replace" error handler differs: it gives one U+FFFD for a whole truncated multi-byte sequence.
    """
    out: list[str] = []
    i = 0
    while i < len(data):
        size = _utf8_length(data[i])
        try:  # strict: a truncated, overlong or surrogate sequence fails, as in SentencePiece
            char = data[i:i + size].decode("utf-8") if size else ""
        except UnicodeDecodeError:
            char = ""
        out.append(char or "\ufffd")
        i += size if char else 1
    return "".join(out)


def _utf8_length(lead: int) -> int:
    """The length of the UTF-8 sequence that `lead` starts; 0 for a byte that starts none."""
    for size, (mask, value) in enumerate(((0x80, 0x00), (0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0)), start=1):
        if lead & mask == value:
            return size
    return 0
