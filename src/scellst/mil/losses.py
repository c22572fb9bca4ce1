"""Spot-level losses: MSE on normalised log expression, NB and Poisson on raw counts."""

from __future__ import annotations

import torch


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


def nb_nll(counts: torch.Tensor, mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of counts under NB(mean ``mu``, inverse dispersion theta)."""
    theta = torch.exp(log_theta).expand_as(mu)
    eps = 1e-8
    log_theta_mu = torch.log(theta + mu + eps)
    ll = (
        torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1)
        + theta * (torch.log(theta + eps) - log_theta_mu)
        + counts * (torch.log(mu + eps) - log_theta_mu)
    )
    return -ll.mean()


def poisson_nll(counts: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return torch.mean(mu - counts * torch.log(mu + 1e-8) + torch.lgamma(counts + 1))
