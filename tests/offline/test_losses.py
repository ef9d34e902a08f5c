"""Pure losses on hand-computed cases, the IPS/SNIPS/DR identities and PLD's resampling limits."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from offline import losses as L


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-6) -> bool:
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_pointwise_losses_by_hand() -> None:
    assert close(L.squared_error(t(3.0, 1.5), t(5.0, 1.0)), t(4.0, 0.25))
    # σ(ln 3) = 3/4: −log(3/4) for label 1, −log(1/4) for label 0; σ(0) = 1/2.
    bce = L.bce_with_logits(t(math.log(3), math.log(3), 0.0), t(1.0, 0.0, 1.0))
    assert close(bce, t(math.log(4 / 3), math.log(4), math.log(2)))
    assert close(L.pointwise_loss("squared", t(2.0), t(0.0)), t(4.0))
    assert close(L.pointwise_loss("bce", t(0.0), t(0.0)), t(math.log(2)))
    with pytest.raises(ValueError, match="squared"):
        L.pointwise_loss("l1", t(0.0), t(0.0))


def test_bpr_by_hand_and_stable() -> None:
    assert close(L.bpr_loss(t(1.0, 0.0), t(0.0, 0.0)), t(math.log(1 + math.exp(-1)), math.log(2)))
    assert torch.isfinite(L.bpr_loss(t(-200.0), t(200.0))).all()
    assert close(L.bpr_loss(t(-200.0), t(200.0)), t(400.0))


def test_ips_and_snips_by_hand() -> None:
    losses, propensity = t(1.0, 2.0, 3.0), t(0.5, 0.25, 1.0)
    assert close(L.naive_loss(losses), 2.0)
    assert close(L.inverse_propensity(propensity, clip=0.5), t(2.0, 2.0, 1.0))
    assert close(L.ips_loss(losses, L.inverse_propensity(propensity)), (2 + 8 + 3) / 3)
    assert close(L.ips_loss(losses, L.inverse_propensity(propensity, clip=0.5)), (2 + 4 + 3) / 3)
    assert close(L.snips_loss(losses, L.inverse_propensity(propensity)), (2 + 8 + 3) / (2 + 4 + 1))


def test_ips_with_unit_propensity_and_snips_with_equal_propensity_are_naive() -> None:
    losses = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert close(L.ips_loss(losses, torch.ones(50, dtype=torch.float64)), L.naive_loss(losses))
    assert close(L.snips_loss(losses, torch.full((50,), 1 / 0.3, dtype=torch.float64)),
                 L.naive_loss(losses))
    assert not close(L.ips_loss(losses, torch.full((50,), 1 / 0.3, dtype=torch.float64)),
                     L.naive_loss(losses))


def test_doubly_robust_by_hand() -> None:
    errors, imputed_observed, imputed_unobserved = t(1.0, 2.0), t(0.5, 1.0), t(0.2, 0.3)
    weights = t(2.0, 4.0)
    # direct part (0.5 + 1.0 + 0.2 + 0.3) / 4, correction (0.5·2 + 1.0·4) / 4
    assert close(L.doubly_robust_loss(errors, imputed_observed, imputed_unobserved, weights),
                 0.5 + 1.25)
    # the 2 observed rows stand for 10, the 2 sampled pairs for 30: scales 5 and 15, |D| = 40
    scaled = L.doubly_robust_loss(errors, imputed_observed, imputed_unobserved, weights,
                                  n_observed=10, n_unobserved=30)
    assert close(scaled, (5 * 1.5 + 15 * 0.5) / 40 + 5 * (0.5 * 2 + 1.0 * 4) / 40)


def test_doubly_robust_with_perfect_imputation_is_the_direct_part() -> None:
    gen = torch.Generator().manual_seed(1)
    errors = torch.rand(20, generator=gen, dtype=torch.float64)
    weights = 1 / (torch.rand(20, generator=gen, dtype=torch.float64) * 0.9 + 0.05)
    imputed_unobserved = torch.rand(40, generator=gen, dtype=torch.float64)
    direct = (errors.sum() + imputed_unobserved.sum()) / 60
    assert close(L.doubly_robust_loss(errors, errors.clone(), imputed_unobserved, weights), direct,
                 tol=1e-12)
    scaled = L.doubly_robust_loss(errors, errors.clone(), imputed_unobserved, weights, 500, 9e4)
    assert close(scaled, (25 * errors.sum() + 2250 * imputed_unobserved.sum()) / 9.05e4,
                 tol=1e-12)
    off = L.doubly_robust_loss(errors, errors + 0.1, imputed_unobserved, weights)
    assert not close(off, (errors.sum() + 0.1 * 20 + imputed_unobserved.sum()) / 60)


def test_imputation_loss_by_hand() -> None:
    assert close(L.imputation_loss(t(1.0, 2.0), t(0.5, 4.0), t(2.0, 0.5)), 0.25 * 2 + 4 * 0.5)


def test_drop_rate_schedule() -> None:
    assert L.drop_rate_schedule(0, 0.2, 100) == 0.0
    assert close(L.drop_rate_schedule(50, 0.2, 100), 0.1)
    assert L.drop_rate_schedule(100, 0.2, 100) == 0.2
    assert L.drop_rate_schedule(10_000, 0.2, 100) == 0.2
    assert L.drop_rate_schedule(3, 0.2, 0) == 0.2


def test_truncation_drops_the_largest_losses() -> None:
    keep = L.truncated_keep_mask(t(5.0, 1.0, 4.0, 2.0, 3.0), 0.4)
    assert keep.tolist() == [False, True, False, True, True]
    value, _ = L.truncated_loss(t(5.0, 1.0, 4.0, 2.0, 3.0), 0.4)
    assert close(value, 2.0)
    losses = torch.rand(103, generator=torch.Generator().manual_seed(2))
    for rate in (0.0, 0.1, 0.25, 0.7):
        keep = L.truncated_keep_mask(losses, rate)
        assert int((~keep).sum()) == math.floor(rate * 103)
        if rate > 0:
            assert losses[~keep].min() >= losses[keep].max()


def test_reweighted_losses_by_hand() -> None:
    log2 = math.log(2)
    assert close(L.reweighted_bce(t(0.0, 0.0), t(1.0, 0.0), beta=1.0), t(0.5 * log2, 0.5 * log2))
    logit = t(math.log(3))  # σ = 3/4
    assert close(L.reweighted_bce(logit, t(1.0), beta=2.0), 0.75**2 * math.log(4 / 3))
    assert close(L.reweighted_bce(logit, t(0.0), beta=2.0), 0.25**2 * math.log(4))
    sig1 = 1 / (1 + math.exp(-1))
    assert close(L.reweighted_bpr(t(1.0), t(0.0), beta=2.0), sig1**2 * -math.log(sig1))
    logits = torch.randn(10, dtype=torch.float64)
    labels = (torch.rand(10) > 0.5).double()
    assert close(L.reweighted_bce(logits, labels, 0.0), L.bce_with_logits(logits, labels))


def test_reweighting_is_detached() -> None:
    logit = t(0.3).requires_grad_()
    L.reweighted_bce(logit, t(1.0), beta=1.0).sum().backward()
    sigma = torch.sigmoid(t(0.3))
    assert close(logit.grad, sigma * (sigma - 1))  # weight · dBCE/ds, no derivative of the weight


def test_rel_ips_loss_by_hand_and_bce_at_full_exposure() -> None:
    logit = t(math.log(3))  # σ = 3/4
    assert close(L.rel_ips_loss(logit, t(2.0)), 2 * math.log(4 / 3) - math.log(4))
    logits = torch.randn(10, dtype=torch.float64)
    assert close(L.rel_ips_loss(logits, torch.ones(10, dtype=torch.float64)),
                 L.bce_with_logits(logits, torch.ones(10, dtype=torch.float64)))


def test_pld_probabilities_by_hand_and_limits() -> None:
    assert close(L.pld_candidate_probabilities(t(0.0, math.log(2)), 1.0), t(2 / 3, 1 / 3))
    losses = torch.rand(64, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    uniform = L.pld_candidate_probabilities(losses, 1e6)
    assert close(uniform, torch.full_like(uniform, 0.2), tol=1e-5)
    greedy = L.pld_candidate_probabilities(losses, 1e-6)
    assert torch.equal(greedy.argmax(dim=1), losses.argmin(dim=1))
    assert close(greedy.max(dim=1).values, torch.ones(64))
    with pytest.raises(ValueError, match="tau"):
        L.pld_candidate_probabilities(losses, 0.0)


def uniforms(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64)


def test_pld_choose_limits() -> None:
    gen = torch.Generator().manual_seed(4)
    losses = torch.rand(20_000, 5, generator=gen)
    choice = L.pld_choose(losses, 1e6, uniforms(20_000, gen))
    counts = torch.bincount(choice, minlength=5).numpy()
    assert chisquare(counts).pvalue > 1e-3
    assert torch.equal(L.pld_choose(losses[:500], 1e-6, uniforms(500, gen)),
                       losses[:500].argmin(dim=1))


def test_pld_choose_matches_probabilities() -> None:
    gen = torch.Generator().manual_seed(5)
    losses = t(0.1, 0.2, 0.4, 0.8).expand(40_000, 4)
    probabilities = L.pld_candidate_probabilities(losses[0], 0.2)
    counts = torch.bincount(L.pld_choose(losses, 0.2, uniforms(40_000, gen)), minlength=4)
    assert chisquare(counts.numpy(), (probabilities * 40_000).numpy()).pvalue > 1e-3


def test_choose_by_uniforms_inverts_the_cdf() -> None:
    probabilities = t(0.2, 0.5, 0.3).expand(5, 3)
    index = L.choose_by_uniforms(probabilities, t(0.0, 0.19, 0.21, 0.69, 0.999))
    assert index.tolist() == [0, 0, 1, 1, 2]


def test_gaussian_kernel_by_hand() -> None:
    kernel = L.gaussian_kernel(t(0.0, 0.0).reshape(1, 2), t(1.0, 0.0, 0.0, 2.0).reshape(2, 2), 0.5)
    assert close(kernel, t(math.exp(-0.5), math.exp(-2.0)).reshape(1, 2))


def test_kernel_balancing_by_hand() -> None:
    weights = t(1.0, 3.0)
    kernel_observed = t(0.5, 1.0).reshape(1, 2)
    kernel_all = t(1.0, 0.0).reshape(1, 2)
    violation = L.kernel_balance_violation(weights, kernel_observed, kernel_all)
    assert close(violation, t(0.5 - (0.5 + 3.0) / 2))
    loss = L.kernel_balancing_loss(weights, kernel_observed, kernel_all, gamma=2.0, tolerance=0.25)
    assert close(loss, 3 * math.log(3) / 2 + 2.0 * (1.25 - 0.25))
    within = L.kernel_balancing_loss(weights, kernel_observed, kernel_all, gamma=2.0,
                                     tolerance=2.0)
    assert close(within, 3 * math.log(3) / 2)
