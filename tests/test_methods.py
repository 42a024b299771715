"""The method registry, the shared top-n selection, and the entropy and random methods."""

import inspect

import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import (
    METHODS,
    PruneInputs,
    available_methods,
    get_method,
    method_stage,
    register,
    top_n,
)
from entropyprune.score import token_entropy


def make_inputs(images=2, tokens=40, heads=8, head_dim=16, data_seed=0, **cfg):
    g = torch.Generator().manual_seed(data_seed)
    states = torch.randn(images, tokens, heads, head_dim, generator=g)
    hidden = torch.randn(images, tokens, heads * head_dim, generator=g)
    config = PruneConfig(**({"keep": 10} | cfg))
    return PruneInputs(states=states, hidden=hidden, num_heads=heads, config=config)


def test_top_n_breaks_ties_toward_the_lower_index_and_returns_ascending():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    kept = top_n(scores, 2)
    assert kept.tolist() == [[1, 2], [0, 1]]
    assert kept.dtype == torch.int64
    assert top_n(scores, 4).tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]
    assert top_n(scores, 0).shape == (2, 0)
    assert top_n(scores, 6).tolist() == [list(range(6))] * 2


def test_top_n_matches_a_reference_sort_on_many_ties():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (5, 200), generator=g).float()
    kept = top_n(scores, 37)
    for row, k in zip(scores.tolist(), kept.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:37]
        assert k == sorted(order)


def test_top_n_rejects_bad_n():
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        top_n(torch.zeros(1, 6), 7)
    with pytest.raises(TypeError):
        top_n(torch.zeros(1, 6), torch.tensor(2))


def test_registry_has_one_signature():
    assert {"entropy", "random", "fastv"} <= set(available_methods())
    for name in available_methods():
        fn = get_method(name)
        assert list(inspect.signature(fn).parameters) == ["inputs", "n_keep"]
        assert method_stage(name) in ("llm", "vision")


@pytest.mark.parametrize("name", ["entropy", "random"])
def test_methods_that_read_only_image_states_run_on_plain_tensors(name):
    # (Methods that read more than the image tokens' states run on the model: tests/test_baselines.py.)
    fn = get_method(name)
    if True:
        inputs = make_inputs(method=name)
        kept, scores = fn(inputs, 10)
        assert kept.shape == (2, 10) and kept.dtype == torch.int64
        assert scores.shape == (2, 40) and scores.dtype == torch.float32
        assert (kept[:, 1:] > kept[:, :-1]).all()


def test_unknown_method_and_duplicate_registration():
    with pytest.raises(ValueError, match="--prune-method 'nope'.*entropy"):
        get_method("nope")
    with pytest.raises(ValueError, match="--prune-method"):
        method_stage("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("entropy")(lambda inputs, n: (None, None))
    with pytest.raises(ValueError, match="stage"):
        register("_x", stage="decoder")
    assert "_x" not in METHODS


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_entropy_keeps_top_n_of_token_entropy(variant):
    inputs = make_inputs(variant=variant, data_seed=3)
    kept, scores = get_method("entropy")(inputs, 12)
    expected_scores = token_entropy(inputs.states, 8, variant=variant)
    torch.testing.assert_close(scores, expected_scores.float())
    assert torch.equal(kept, top_n(expected_scores, 12))


def test_entropy_works_on_half_precision_states():
    inputs = make_inputs(data_seed=4)
    inputs.states = inputs.states.half()
    kept, scores = get_method("entropy")(inputs, 5)
    assert kept.shape == (2, 5) and torch.isfinite(scores).all()


def test_random_is_deterministic_per_seed_and_differs_across_seeds():
    fn = get_method("random")
    kept, scores = fn(make_inputs(method="random", seed=0), 10)
    again = fn(make_inputs(method="random", seed=0, data_seed=5), 10)  # other states, same seed
    assert torch.equal(kept, again[0]) and torch.equal(scores, again[1])
    other = fn(make_inputs(method="random", seed=1), 10)
    assert not torch.equal(kept, other[0])
    # Each image's draw depends on the seed and its size only, never on the rest of the batch.
    assert torch.equal(kept[0], kept[1])
    alone = fn(make_inputs(method="random", seed=0, images=1), 10)
    assert torch.equal(alone[0][0], kept[0])
    assert torch.equal(kept, top_n(scores, 10))


def test_method_options_are_parsed_checked_and_recorded():
    from dataclasses import dataclass, field

    from entropyprune.options import parse_option_args

    @dataclass
    class Opts:
        pivots: int = 4
        layers: tuple[int, ...] = (8, 16, 24)
        mode: str = field(default="a", metadata={"choices": ("a", "b")})
        scale: float = 0.5
        merge: bool = True

        def check(self):
            if self.pivots < 1:
                raise ValueError(f"pivots must be >= 1, got {self.pivots}")

    name = "_test_options"
    register(name, options=Opts)(lambda inputs, n: None)
    try:
        cfg = PruneConfig(method=name, keep=10, options=parse_option_args(["layers=2,8,16", "merge=false"]))
        opts = cfg.method_options()
        assert opts == Opts(layers=(2, 8, 16), merge=False)
        # stored normalised, defaults included: what run records and sidecars write
        assert cfg.to_dict()["options"] == {"pivots": 4, "layers": [2, 8, 16], "mode": "a", "scale": 0.5,
                                            "merge": False}
        assert PruneConfig.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ValueError, match=r"--prune-option: nope is not an option of '_test_options'; its "
                                             r"options are pivots=4; layers=8,16,24; mode=a \(one of a, b\)"):
            PruneConfig(method=name, keep=10, options={"nope": 1})
        for bad in ({"pivots": "x"}, {"mode": "c"}, {"scale": "nan"}, {"merge": "maybe"}, {"layers": "1,x"}):
            with pytest.raises(ValueError, match="not a valid value for '_test_options'"):
                PruneConfig(method=name, keep=10, options=bad)
        with pytest.raises(ValueError, match="pivots must be >= 1, got 0"):
            PruneConfig(method=name, keep=10, options={"pivots": 0})
        with pytest.raises(ValueError, match="expected NAME=VALUE"):
            parse_option_args(["pivots"])
        with pytest.raises(ValueError, match="given twice"):
            parse_option_args(["pivots=1", "pivots=2"])
        with pytest.raises(ValueError, match="method 'entropy' has no options"):
            PruneConfig(method="entropy", keep=10, options={"x": 1})
    finally:
        METHODS.pop(name)
