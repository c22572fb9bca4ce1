"""The per-cell MLP: one cell embedding in, one expression vector out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .ridge import CLIP_Z


class CellMLP(nn.Module):
    """Standardise the embedding, then MLP ``in -> hidden... -> genes`` with a positive output.

    ``output="softplus"`` (sCellST: Softplus with beta 20) suits log-normalised targets;
    ``output="exp"`` predicts rates for count likelihoods, with a per-gene bias initialised at the
    log of the mean rate so training starts at the right scale.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        hidden: Sequence[int] = (256, 256, 256),
        dropout: float = 0.1,
        output: str = "softplus",
        softplus_beta: float = 20.0,
    ):
        super().__init__()
        if output not in ("softplus", "exp"):
            raise ValueError(f"output must be 'softplus' or 'exp', got {output!r}")
        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))
        layers: list[nn.Module] = []
        prev = n_in
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.LeakyReLU(), nn.Dropout(dropout)]
            prev = width
        layers.append(nn.Linear(prev, n_out))
        self.net = nn.Sequential(*layers)
        self.output = output
        self.softplus = nn.Softplus(beta=softplus_beta)

    def set_input_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.in_mean.copy_(mean)
        self.in_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def init_output(self, typical: torch.Tensor) -> None:
        """Start from ``typical`` (per gene, in output units): zero weights, matching bias."""
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            if self.output == "exp":
                last.bias.copy_(torch.log(typical.clamp_min(1e-6)))
            else:  # inverse softplus, x + log(1 - exp(-b x)) / b: no overflow for large x
                b = self.softplus.beta
                x = typical.clamp_min(1e-4)
                last.bias.copy_(x + torch.log(-torch.expm1(-b * x)) / b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # standardised inputs; a non-finite feature counts as the training mean, and features
        # beyond CLIP_Z standard deviations are clipped (cells unlike any training cell)
        z = torch.nan_to_num((x - self.in_mean) / self.in_std, nan=0.0).clamp(-CLIP_Z, CLIP_Z)
        z = self.net(z)
        return torch.exp(z.clamp(max=30)) if self.output == "exp" else self.softplus(z)
