"""DivPrune: the greedy max-min selection against a plain-loop transcription of the official rule (float64), the
budget against the official ``int(round(SUBSET_RATIO * V))``, and the tiny model's kept tokens against the rule
recomputed in the test from transformers' CLIPVisionModel and the tiny LLaVA's projector."""

import os

import numpy as np
import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import Stage
from entropyprune.methods.divprune import cosine_distance, max_min_picks
from llava.mm_utils import process_images
from llava.tools.make_tiny_checkpoint import TOWER_DIR
from tests.conftest import make_image, prompt_batch


def official_picks(features: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """The official DivPrune loop, token by token in float64: D = 1 - cos; the first pick maximises the second
    smallest value of its column of D; each later one maximises its smallest distance to the picked rows;
    the first maximum wins. Nothing excludes a token already picked (as in the official code)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    tokens = dist.shape[0]
    picks: list[int] = []
    values: list[float] = []
    for step in range(n):
        best, best_score = -1, -np.inf
        for j in range(tokens):
            if step == 0:
                score = sorted(dist[i, j] for i in range(tokens))[1]
            else:
                score = min(dist[p, j] for p in picks)
            if score > best_score:
                best, best_score = j, score
        picks.append(best)
        values.append(best_score)
    return picks, values


@pytest.mark.parametrize("tokens,dim,n", [(7, 4, 3), (12, 16, 6), (30, 8, 12), (25, 3, 25)])
def test_the_picks_follow_the_official_max_min_loop(tokens, dim, n):
    gen = torch.Generator().manual_seed(tokens * 100 + dim)
    feats = torch.randn(3, tokens, dim, generator=gen, dtype=torch.float64)
    picks, values, nearest = max_min_picks(cosine_distance(feats), n)
    assert picks.shape == (3, n) and picks.dtype == torch.long
    for i in range(3):
        ref, ref_values = official_picks(feats[i].numpy(), n)
        assert picks[i].tolist() == ref  # the pick order too, not only the set
        np.testing.assert_allclose(values[i].numpy(), ref_values, atol=1e-12)
        # Every token's final smallest distance to the picked set.
        unit = feats[i].numpy() / np.linalg.norm(feats[i].numpy(), axis=1, keepdims=True)
        dist = 1.0 - unit @ unit.T
        np.testing.assert_allclose(nearest[i].numpy(), dist[ref].min(axis=0), atol=1e-12)
    # float32 features, as the tiny model's: the same picks.
    assert torch.equal(max_min_picks(cosine_distance(feats.float()), n)[0], picks)


def test_the_first_pick_is_the_token_whose_nearest_neighbour_is_farthest():
    # Unit vectors at these angles (degrees): two close pairs (0, 5) and (180, 185), and 90 alone. 90's nearest
    # neighbour is 85 degrees away, everyone else's 5: the first pick is 90 (index 2), though a token of a pair
    # is farther from the others on average.
    angles = np.radians([0.0, 5.0, 90.0, 180.0, 185.0])
    feats = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1))[None]
    picks, values, _ = max_min_picks(cosine_distance(feats), 3)
    assert picks[0].tolist() == official_picks(feats[0].numpy(), 3)[0]
    assert picks[0, 0].item() == 2
    assert values[0, 0].item() == pytest.approx(1 - np.cos(np.radians(85)))
    assert cosine_distance(feats)[0].mean(dim=0).argmax().item() != 2  # a mean-distance rule starts elsewhere


def test_ties_go_to_the_lower_index():
    # Orthonormal tokens: every distance is 1, so every step is a tie.
    picks, _, _ = max_min_picks(cosine_distance(torch.eye(6)[None]), 4)
    assert picks.tolist() == [[0, 1, 2, 3]]


def test_a_picked_token_is_never_picked_again_which_the_official_loop_would_do():
    # Three copies of one token and two of another. After 0 and 3 every remaining token is at distance 0 from
    # the picked set, as are the picked ones themselves: the official loop takes token 0 again.
    feats = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2, dtype=torch.float64)
    ref, _ = official_picks(feats.numpy(), 4)
    assert ref == [0, 3, 0, 0]
    picks, _, _ = max_min_picks(cosine_distance(feats[None]), 4)
    assert picks.tolist() == [[0, 3, 1, 2]]  # distinct: the first unpicked of the tied ones


def test_the_official_subset_ratio_is_prune_ratio():
    # SUBSET_RATIO=0.098 (its scripts): int(round(0.098 * 576)) = 56 tokens, at the vision stage.
    assert PruneConfig(method="divprune", ratio=0.098).schedule(32, 576) == [Stage(0, 56)]
    assert PruneConfig(method="divprune", ratio=0.098).stage == "vision"
    # Any three-decimal ratio gives the official count at V = 576 (576 = 2^6 * 9, so r * 576 is never
    # exactly a half and the two roundings agree).
    for k in range(1, 1001):
        r = k / 1000
        official = int(round(r * 576))
        if official >= 1:
            assert PruneConfig(method="divprune", ratio=r).resolve(32, 576) == official, r
    with pytest.raises(ValueError, match="has no options"):
        PruneConfig(method="divprune", ratio=0.098, options={"subset_ratio": 0.1})


@pytest.fixture(scope="module")
def tower(tiny_llava):
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(os.path.join(tiny_llava, TOWER_DIR)).eval()


def test_the_model_keeps_the_official_tokens_for_each_image_of_a_batch(loaded_tiny, tower):
    tok, model, proc, _ = loaded_tiny
    questions = ["What is in the picture?", "Is there a red square on the left side of the image?"]
    images = [make_image(seed=7), make_image(w=300, h=420, seed=8)]
    px = process_images(images, proc, model.config)
    model.set_prune(PruneConfig(method="divprune", ratio=0.098))  # the official default: 56 of 576
    ids, mask = prompt_batch(tok, questions)
    model(ids, attention_mask=mask, images=px)
    trace = model.get_model().prune_trace
    # Reference: transformers' CLIP, LLaVA's features (hidden_states[-2] without CLS), the projector.
    with torch.no_grad():
        hidden = tower(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = model.get_model().mm_projector(hidden).double().numpy()
    for row in range(2):
        (rec,) = trace[row][0]
        picks, values = official_picks(projected[row], 56)
        assert rec.layer == 0 and rec.length == 576 and len(rec.kept) == 56
        assert rec.kept.tolist() == sorted(picks)
        unit = projected[row] / np.linalg.norm(projected[row], axis=1, keepdims=True)
        nearest = (1.0 - unit @ unit.T)[picks].min(axis=0)
        nearest[picks] = values
        np.testing.assert_allclose(rec.scores.double().numpy(), nearest, atol=1e-5)
