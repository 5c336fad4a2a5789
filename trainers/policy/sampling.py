"""One decoding step: next tokens and their log-probs from last-position logits, row by row.

    logits_BV ─► / temperature_B ─► log_softmax ─► logprobs_BV (what is reported)
                                          └─► (top-p < 1: sort, cut the nucleus) ─► inverse CDF at u_B ─► tokens_B

Each row draws its uniform from its own `torch.Generator`, one draw per sampled token and
none for greedy rows, and every operation is row-wise: a row's token depends on its logits,
its parameters and its generator only, never on the rows batched with it.

The reported log-prob is log-softmax(logits / T) at the chosen token, before the top-p cut.
That is what a learner recomputes from the same weights, so the GRPO importance ratio is
exactly 1 on-policy. Greedy rows (T = 0) report the log-prob under T = 1.
"""

from __future__ import annotations

import torch

__all__ = ["sample_next"]


def sample_next(
    logits_BV: torch.Tensor,
    temperature_B: torch.Tensor,
    top_p_B: torch.Tensor,
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens_B, logprobs_B). `generators[i]` (CPU) drives row i; greedy rows leave theirs untouched."""
    greedy_B = temperature_B == 0
    scale_B = torch.where(greedy_B, torch.ones_like(temperature_B), temperature_B)
    logprobs_BV = torch.log_softmax(logits_BV.float() / scale_B[:, None], dim=-1)
    tokens_B = logits_BV.argmax(dim=-1)
    sampled = (~greedy_B).nonzero().squeeze(1).tolist()
    if sampled:
        u_S = torch.stack([torch.rand((), generator=generators[i], dtype=torch.float64) for i in sampled])
        rows = torch.tensor(sampled, device=logits_BV.device)
        tokens_B[rows] = _sample_rows(logprobs_BV[rows].exp(), top_p_B[rows], u_S.to(logits_BV.device))
    return tokens_B, logprobs_BV.gather(1, tokens_B[:, None]).squeeze(1)


def _sample_rows(probs_SV: torch.Tensor, top_p_S: torch.Tensor, u_S: torch.Tensor) -> torch.Tensor:
    """Rows without a nucleus cut (top_p = 1, the RL default) take the inverse CDF in vocabulary
    order; the sort that a nucleus needs was a third of a decode step's sampling on the CPU."""
    whole_S = top_p_S >= 1.0
    if bool(whole_S.all()):
        return _inverse_cdf(probs_SV, u_S)
    tokens_S = torch.empty(u_S.shape, dtype=torch.long, device=probs_SV.device)
    tokens_S[whole_S] = _inverse_cdf(probs_SV[whole_S], u_S[whole_S])
    cut_S = ~whole_S
    tokens_S[cut_S] = _inverse_cdf_nucleus(probs_SV[cut_S], top_p_S[cut_S], u_S[cut_S])
    return tokens_S


def _inverse_cdf(probs_SV: torch.Tensor, u_S: torch.Tensor) -> torch.Tensor:
    """The token whose interval of the CDF (in vocabulary order) holds u·mass, per row; zero-mass
    tokens own empty intervals and are never picked."""
    cdf_SV = probs_SV.double().cumsum(dim=-1)
    index_S1 = torch.searchsorted(cdf_SV, (u_S * cdf_SV[:, -1])[:, None], right=True)
    return index_S1.clamp_(max=probs_SV.shape[-1] - 1).squeeze(1)


def _inverse_cdf_nucleus(probs_SV: torch.Tensor, top_p_S: torch.Tensor, u_S: torch.Tensor) -> torch.Tensor:
    """The token whose interval of the top-p truncated CDF holds u·mass, per row."""
    # A stable descending sort gives every row the same token order whatever it is batched with.
    sorted_SV, order_SV = probs_SV.sort(dim=-1, descending=True, stable=True)
    # Nucleus: keep a token while the mass before it is below top_p (so the first always stays).
    p_SV = sorted_SV.double()
    before_SV = p_SV.cumsum(dim=-1) - p_SV
    kept_SV = torch.where(before_SV < top_p_S[:, None].double(), p_SV, 0.0)
    cdf_SV = kept_SV.cumsum(dim=-1)
    target_S = u_S * cdf_SV[:, -1]
    # First index whose CDF exceeds the target: zero-mass tokens own empty intervals and are never picked.
    index_S = torch.searchsorted(cdf_SV, target_S[:, None], right=True).clamp_(max=probs_SV.shape[-1] - 1)
    return order_SV.gather(1, index_S).squeeze(1)
