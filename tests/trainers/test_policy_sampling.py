"""`sample_next` by hand: inverse-CDF sampling, the nucleus cut, temperature, greedy, row independence."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.policy.sampling import sample_next

# probs [.1, .2, .3, .4]: in vocabulary order, CDF [.1, .3, .6, 1.0] (no nucleus cut);
# sorted descending for a cut: tokens [3, 2, 1, 0], CDF [.4, .7, .9, 1.0]
LOGITS = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))


def _uniform(seed: int) -> float:
    return torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()


def _sample(logits: torch.Tensor, temperature: float, top_p: float, seed: int) -> tuple[int, float]:
    tokens, logprobs = sample_next(
        logits, torch.tensor([temperature]), torch.tensor([top_p]), [torch.Generator().manual_seed(seed)]
    )
    return tokens.item(), logprobs.item()


@pytest.mark.parametrize("seed", range(40))
def test_inverse_cdf_full_distribution(seed: int) -> None:
    u = _uniform(seed)
    expected = 0 if u < 0.1 else 1 if u < 0.3 else 2 if u < 0.6 else 3
    token, logprob = _sample(LOGITS, 1.0, 1.0, seed)
    assert token == expected
    assert logprob == pytest.approx(math.log([0.1, 0.2, 0.3, 0.4][expected]), abs=1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_nucleus_keeps_the_top_mass_and_reports_the_untruncated_logprob(seed: int) -> None:
    # top_p .6: mass before each sorted token [0, .4, .7, .9] → keep tokens 3 and 2 (mass .7);
    # target u·.7 falls in token 3's interval [0, .4) iff u < 4/7.
    u = _uniform(seed)
    expected = 3 if u < 4 / 7 else 2
    token, logprob = _sample(LOGITS, 1.0, 0.6, seed)
    assert token == expected
    # log-softmax(logits / T) before the cut: ln .4 or ln .3, not ln(.4/.7) or ln(.3/.7)
    assert logprob == pytest.approx(math.log(0.4 if expected == 3 else 0.3), abs=1e-6)


def test_temperature_scales_the_reported_logprob() -> None:
    # T = 2: probs ∝ sqrt([.1,.2,.3,.4]) = [.31623, .44721, .54772, .63246], sum 1.94362
    #        → [.16270, .23009, .28180, .32540]
    token, logprob = _sample(LOGITS, 2.0, 1.0, seed=0)
    expected = [0.16270, 0.23009, 0.28180, 0.32540][token]
    assert logprob == pytest.approx(math.log(expected), abs=1e-4)


def test_greedy_takes_the_argmax_reports_t1_and_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    tokens, logprobs = sample_next(LOGITS, torch.tensor([0.0]), torch.tensor([0.5]), [generator])
    assert tokens.item() == 3
    assert logprobs.item() == pytest.approx(math.log(0.4), abs=1e-6)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize(("top_p", "mates_top_p"), [(0.9, (1.0, 0.5)), (1.0, (1.0, 0.5)), (1.0, (1.0, 1.0))])
def test_a_row_does_not_depend_on_its_batch_mates(top_p: float, mates_top_p: tuple[float, float]) -> None:
    # Whether its mates take the nucleus path or not, a row samples what it samples alone.
    other = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    alone = [_sample(LOGITS, 0.8, top_p, seed) for seed in range(20)]
    for seed in range(20):
        tokens, logprobs = sample_next(
            torch.cat([other, LOGITS, other]),
            torch.tensor([0.6, 0.8, 1.3]),
            torch.tensor([mates_top_p[0], top_p, mates_top_p[1]]),
            [torch.Generator().manual_seed(99), torch.Generator().manual_seed(seed), torch.Generator().manual_seed(5)],
        )
        assert (tokens[1].item(), pytest.approx(logprobs[1].item(), abs=1e-6)) == alone[seed]
