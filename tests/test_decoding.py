"""Answers decoded as official LLaVA decodes them, checked against the `sentencepiece` package itself.

LLaVA runs transformers 4.37's slow LlamaTokenizer: decode(ids, skip_special_tokens=True) drops the special ids,
cuts one "▁" off the first piece and hands the pieces to SentencePiece (`legacy=False`, LLaVA-1.5's setting,
loads the model with add_dummy_prefix off); the answer is then `.strip()`ped. The references below do exactly
that with sentencepiece.SentencePieceProcessor on the checkpoint's tokenizer.model.
"""

import os
import pathlib
import random
import re

import pytest
import torch

from llava.decoding import decode_answer, decode_ids
from llava.model.builder import load_tokenizer

SPACE = "\u2581"


@pytest.fixture(scope="module")
def tok_sp(tiny_llava):
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model_file = os.path.join(tiny_llava, "tokenizer.model")
    proto = pb.ModelProto.FromString(open(model_file, "rb").read())
    proto.normalizer_spec.add_dummy_prefix = False  # what 4.37 does for legacy=False
    no_prefix = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return load_tokenizer(tiny_llava), spm.SentencePieceProcessor(model_file=model_file), no_prefix


def _llava(sp, ids, special=(0, 1, 2)) -> str:
    """transformers 4.37 LlamaTokenizer.decode(ids, skip_special_tokens=True), on SentencePiece `sp`."""
    pieces = [sp.id_to_piece(i) for i in ids if i not in special]
    if not pieces:
        return ""
    if pieces[0].startswith(SPACE):
        pieces[0] = pieces[0][1:]
    return sp.decode_pieces(pieces)


def _sequences(sp, count=3000, seed=0):
    """Random ids, byte-token runs (valid, truncated and invalid UTF-8), pieces with "▁", special tokens
    anywhere, and encoded text with characters that only byte fallback can spell."""
    rng = random.Random(seed)
    n = sp.get_piece_size()
    byte_ids = [i for i in range(n) if sp.is_byte(i)]
    space_ids = [i for i in range(n) if sp.id_to_piece(i).startswith(SPACE)]
    texts = ["a", " ", "  ", "é", "中", "😀", "\n", "Yes", " No", SPACE, "\ufffd", "\t", "A.", "42"]
    out = [[], [1], [1, 2], [0, 0]]
    for _ in range(count):
        kind, length = rng.randrange(5), rng.randint(1, 12)
        if kind == 0:
            ids = [rng.randrange(n) for _ in range(length)]
        elif kind == 1:
            ids = [rng.choice(byte_ids) for _ in range(length)]
        elif kind == 2:
            ids = [rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(n) for _ in range(length)]
        elif kind == 3:
            ids = [rng.choice((0, 1, 2))] * rng.randint(0, 2) + [rng.choice(space_ids) for _ in range(length)]
        else:
            ids = sp.encode("".join(rng.choice(texts) for _ in range(length)))
            ids = ids[rng.randrange(len(ids)):] if ids and rng.random() < 0.5 else ids  # start mid-character
        out.append(ids)
    return out


def test_the_issue_example(tok_sp):
    tok, _, _ = tok_sp
    ids = [242, 151, 38, 139, 16]  # bytes EF 94 '#' 88 '\r': a truncated 3-byte character, '#', a stray byte
    assert decode_ids(tok, ids) == "\ufffd\ufffd#\ufffd\r"
    assert decode_answer(tok, ids) == "\ufffd\ufffd#\ufffd"
    assert tok.decode(ids, skip_special_tokens=True) != decode_ids(tok, ids)  # transformers 5 differs here


def test_decode_equals_llava_on_sentencepiece(tok_sp):
    tok, sp, no_prefix = tok_sp
    assert [tok.convert_ids_to_tokens(i) for i in range(sp.get_piece_size())] == [
        sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    for ids in _sequences(sp):
        assert decode_ids(tok, ids) == _llava(no_prefix, ids), ids
        answer = decode_answer(tok, ids)
        # legacy=True keeps the dummy prefix, which only changes leading spaces: the answer is the same
        assert answer == _llava(sp, ids).strip() == _llava(no_prefix, ids).strip(), ids
        # and so is SentencePiece's own decoding of the non-special ids
        assert answer == sp.decode([i for i in ids if i > 2]).strip(), ids


def test_byte_runs(tok_sp):
    tok, sp, _ = tok_sp

    def byte_ids(data: bytes):
        return [sp.piece_to_id(f"<0x{b:02X}>") for b in data]

    for text in ("中文", "😀 é", "a\u2028b"):
        assert decode_ids(tok, byte_ids(text.encode())) == text
    emoji = "😀".encode()
    assert decode_ids(tok, byte_ids(emoji[:3] + b"!")) == "\ufffd" * 3 + "!"  # one U+FFFD per byte
    assert decode_ids(tok, byte_ids(b"\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80")) == "\ufffd" * 9  # overlong etc.
    assert decode_ids(tok, byte_ids("é".encode()[:1]) + sp.encode("x")) == "\ufffd x"  # "▁x" ends the run


def test_special_tokens_and_leading_space(tok_sp):
    tok, sp, _ = tok_sp
    yes = sp.encode("Yes")
    assert sp.id_to_piece(yes[0]).startswith(SPACE)
    assert decode_ids(tok, yes) == "Yes"  # the prefix space of the first piece goes
    assert decode_ids(tok, [1, *yes, 2]) == "Yes"
    assert decode_ids(tok, [0, *sp.encode("a b"), 2, 2]) == "a b"  # inner spaces stay; <unk> is skipped too
    assert decode_ids(tok, sp.encode("  No")) == "  No"  # "▁▁▁No" or "▁" "▁▁No": only one "▁" is cut
    assert decode_answer(tok, sp.encode("  No") + [2]) == "No"


def test_added_tokens_and_ids_past_the_vocabulary(tiny_hf):
    tok = load_tokenizer(tiny_hf)
    image, pad = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<pad>")
    ids = tok("Yes, a cat").input_ids
    plain = decode_ids(tok, ids)
    assert plain == "Yes, a cat"
    assert decode_ids(tok, [image, *ids[1:], pad, len(tok) + 5]) == plain  # special added tokens are skipped


def test_keywords_stopping_criteria_decodes_the_same_way(tok_sp):
    from llava.mm_utils import KeywordsStoppingCriteria

    tok, sp, _ = tok_sp
    prompt = torch.tensor([sp.encode("USER: hi ASSISTANT:")])
    stop = KeywordsStoppingCriteria(["\ufffd#"], tok, prompt)
    assert stop(torch.cat([prompt, torch.tensor([[242, 151, 38]])], dim=1))
    assert not stop(torch.cat([prompt, torch.tensor([sp.encode("No")])], dim=1))


def test_every_answer_is_decoded_by_the_helper():
    root = pathlib.Path(__file__).resolve().parents[1]
    direct = re.compile(r"\.batch_decode\(|tokenizer\.decode\(")
    helper = root / "llava" / "decoding.py"
    offenders = [str(f.relative_to(root)) for d in ("llava", "entropyprune") for f in (root / d).rglob("*.py")
                 if f != helper and direct.search(f.read_text(encoding="utf-8"))]
    assert offenders == []
