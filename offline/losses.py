"""Pure, stateless training losses on tensors (per-sample losses, estimators, denoising pieces).

Everything here is a function of its tensor arguments only, so each piece can be checked on a
hand-computed case; ``offline.objectives`` composes them with sampling and auxiliary models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recsys.validation import message

POINTWISE_LOSSES: tuple[str, ...] = ("squared", "bce")


def squared_error(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error (rating prediction)."""
    return (prediction - label) ** 2


def bce_with_logits(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-sample binary cross-entropy of a logit against a label in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logit, label, reduction="none")


def pointwise_loss(kind: str, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-sample loss by name: ``"squared"`` (ratings) or ``"bce"`` (logits against 0/1)."""
    if kind == "squared":
        return squared_error(prediction, label)
    if kind == "bce":
        return bce_with_logits(prediction, label)
    raise ValueError(message("loss", f"one of {POINTWISE_LOSSES}", repr(kind)))


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-triple BPR loss −log σ(s_pos − s_neg), computed stably as softplus(s_neg − s_pos)."""
    return F.softplus(negative - positive)


def naive_loss(losses: torch.Tensor) -> torch.Tensor:
    """Mean loss over the observed rows (biased under missing-not-at-random observation)."""
    return losses.mean()


def inverse_propensity(propensity: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """1 / max(p, clip): the IPS weight, with an optional floor on the propensity."""
    if clip is not None:
        propensity = propensity.clamp_min(clip)
    return 1.0 / propensity


def ips_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·loss over the batch divided by the batch size: IPS with w = 1/p (unbiased up to a
    constant factor; see ``inverse_propensity``), or any balancing weights averaging about 1."""
    return (losses * weights).sum() / losses.numel()


def snips_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·loss / Σ w over the batch: self-normalised IPS (small bias, less variance)."""
    return (losses * weights).sum() / weights.sum()


def doubly_robust_loss(
    errors: torch.Tensor,
    imputed_observed: torch.Tensor,
    imputed_unobserved: torch.Tensor,
    inverse_propensity: torch.Tensor,
    n_observed: float | None = None,
    n_unobserved: float | None = None,
) -> torch.Tensor:
    """DR loss (1/|D|) Σ_D [ê + o·(e − ê)·w] (Wang et al. 2019; w = 1/p, or KB weights).

    D is the observed rows plus the sampled unobserved pairs; the loss is the direct part
    (1/|D|) Σ_D ê plus the correction (1/|D|) Σ_observed (e − ê)·w, which is exactly zero when
    ê = e. By default D is the batch itself; ``n_observed`` / ``n_unobserved`` (the population
    sizes the batch's observed rows and sampled pairs stand for) reweight each part to its
    population.
    """
    n_obs, n_unobs = errors.numel(), imputed_unobserved.numel()
    scale_obs = 1.0 if n_observed is None else n_observed / n_obs
    scale_unobs = 1.0 if n_unobserved is None else n_unobserved / max(n_unobs, 1)
    n_total = scale_obs * n_obs + scale_unobs * n_unobs
    direct = (scale_obs * imputed_observed.sum() + scale_unobs * imputed_unobserved.sum()) / n_total
    correction = scale_obs * ((errors - imputed_observed) * inverse_propensity).sum() / n_total
    return direct + correction


def imputation_loss(
    imputed: torch.Tensor, errors: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ_observed w·(ê − e)²: what the DR imputation model is fitted on (w = 1/p, or KB
    weights)."""
    return ((imputed - errors) ** 2 * weights).sum()


def drop_rate_schedule(step: int, max_drop_rate: float, num_gradual: int) -> float:
    """T-CE drop rate at global step t: min(t / num_gradual · max_drop_rate, max_drop_rate)."""
    if num_gradual <= 0:
        return max_drop_rate
    return min(step / num_gradual * max_drop_rate, max_drop_rate)


def truncated_keep_mask(losses: torch.Tensor, drop_rate: float) -> torch.Tensor:
    """Boolean mask keeping all but the ⌊drop_rate·n⌋ largest losses (T-CE's truncation)."""
    n = losses.numel()
    n_drop = math.floor(drop_rate * n + 1e-9)
    keep = torch.ones(n, dtype=torch.bool, device=losses.device)
    if n_drop > 0:
        keep[torch.topk(losses.detach(), n_drop, sorted=False).indices] = False
    return keep


def truncated_loss(losses: torch.Tensor, drop_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T-CE loss: the mean of the kept (smallest) losses, and the keep mask."""
    keep = truncated_keep_mask(losses, drop_rate)
    return losses[keep].mean(), keep


def reweighted_bce(logit: torch.Tensor, label: torch.Tensor, beta: float) -> torch.Tensor:
    """R-CE per-sample BCE weighted by detached σ(s)^β (positives) or (1 − σ(s))^β (negatives)."""
    probability = torch.sigmoid(logit).detach()
    weight = probability.pow(beta) * label + (1.0 - probability).pow(beta) * (1.0 - label)
    return bce_with_logits(logit, label) * weight


def reweighted_bpr(positive: torch.Tensor, negative: torch.Tensor, beta: float) -> torch.Tensor:
    """R-CE on the pairwise loss: BPR weighted by detached σ(s_pos − s_neg)^β."""
    weight = torch.sigmoid(positive - negative).detach().pow(beta)
    return bpr_loss(positive, negative) * weight


def rel_ips_loss(logit: torch.Tensor, inverse_propensity: torch.Tensor) -> torch.Tensor:
    """Rel-MF per-click loss (Saito et al., WSDM 2020): a click at exposure propensity θ counts
    as relevance 1/θ, so its loss is (1/θ)·(−log σ(s)) + (1 − 1/θ)·(−log(1 − σ(s)))."""
    ones, zeros = torch.ones_like(logit), torch.zeros_like(logit)
    return (inverse_propensity * bce_with_logits(logit, ones)
            + (1 - inverse_propensity) * bce_with_logits(logit, zeros))


def pld_candidate_probabilities(losses: torch.Tensor, tau: float) -> torch.Tensor:
    """PLD resampling probabilities softmax(−ℓ/τ) over the last axis (the candidate pool)."""
    if tau <= 0:
        raise ValueError(message("tau", "a number > 0", tau))
    # softmax written out: torch.softmax over a last axis of a few candidates is several times
    # slower on CPU, and this sits on PLD's per-step path.
    weights = torch.exp((losses.amin(dim=-1, keepdim=True) - losses) / tau)
    return weights / weights.sum(dim=-1, keepdim=True)


def choose_by_uniforms(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index per row drawn from ``probabilities`` by inverting its CDF at the given U(0,1) draws."""
    cdf = probabilities.cumsum(dim=-1)
    index = (cdf < uniforms.unsqueeze(-1).to(cdf.dtype) * cdf[..., -1:]).sum(dim=-1)
    return index.clamp_max(probabilities.shape[-1] - 1)


def pld_choose(losses: torch.Tensor, tau: float, uniforms: torch.Tensor) -> torch.Tensor:
    """One candidate index per row of ``losses`` (B, k), drawn with probability softmax(−ℓ/τ)
    by inverting the CDF at the given U(0, 1) draws (B,)."""
    return choose_by_uniforms(pld_candidate_probabilities(losses, tau), uniforms)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Gaussian kernel matrix exp(−γ‖x_a − y_b‖²) of shape (len(x), len(y))."""
    return torch.exp(-gamma * torch.cdist(x, y).pow(2))


def kernel_balance_violation(
    weights: torch.Tensor, kernel_observed: torch.Tensor, kernel_all: torch.Tensor
) -> torch.Tensor:
    """Per-centre violation mean_all k(x_j, ·) − (1/n) Σ_observed w·k(x_j, ·), shape (J,).

    ``kernel_observed`` is (J, n) at the observed rows, ``kernel_all`` (J, M) at pairs sampled
    uniformly from all user-item pairs, ``weights`` (n,) the balancing weights of observed rows.
    """
    return kernel_all.mean(dim=1) - (kernel_observed * weights).sum(dim=1) / weights.numel()


def kernel_balancing_loss(
    weights: torch.Tensor,
    kernel_observed: torch.Tensor,
    kernel_all: torch.Tensor,
    gamma: float,
    tolerance: float,
) -> torch.Tensor:
    """KB weight loss: mean(w log w) + γ·Σ_j max(|violation_j| − C, 0) (Li et al. 2024)."""
    violation = kernel_balance_violation(weights, kernel_observed, kernel_all)
    entropy = (weights * torch.log(weights)).mean()
    return entropy + gamma * torch.relu(violation.abs() - tolerance).sum()
