"""Self-supervised learning of cell-image features: MoCo v3 and BYOL.

Both share one structure (Chen et al. 2021, Grill et al. 2020): a query branch ``backbone ->
projector -> predictor`` trained by gradient descent, and a momentum branch ``backbone ->
projector`` whose weights follow the query branch as an exponential moving average. They differ
in the loss: MoCo v3 classifies, among the momentum embeddings of the batch, the one of the
other view of the same cell (InfoNCE with a temperature); BYOL regresses it (cosine distance).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("moco", "byol")


def mlp(
    n_in: int, hidden: int, n_out: int, n_layers: int = 2, last_bn: bool = True
) -> nn.Sequential:
    """``Linear-BN-ReLU`` blocks, then a ``Linear`` (and a non-affine BN when ``last_bn``)."""
    layers: list[nn.Module] = []
    prev = n_in
    for _ in range(n_layers - 1):
        layers += [nn.Linear(prev, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True)]
        prev = hidden
    layers.append(nn.Linear(prev, n_out, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(n_out, affine=False))
    return nn.Sequential(*layers)


def momentum_at(step: int, total: int, base: float) -> float:
    """Cosine schedule of the momentum from ``base`` (step 0) to 1 (last step)."""
    if total <= 1:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * step / (total - 1)) + 1) / 2


class SSLModel(nn.Module):
    """Query and momentum branches around a backbone, with the MoCo v3 or BYOL loss.

    Parameters
    ----------
    backbone
        Feature extractor ``(n, 3, S, S) -> (n, dim)``; after training, the cell encoder.
    dim
        Its output dimension.
    method
        ``"moco"`` (MoCo v3: symmetric InfoNCE, ``temperature``) or ``"byol"``.
    hidden, out_dim
        Widths of the projector and predictor MLPs (MoCo v3 for ResNets: 3-layer projector,
        2-layer predictor).
    temperature
        InfoNCE temperature (MoCo v3).
    """

    def __init__(
        self,
        backbone: nn.Module,
        dim: int,
        method: str = "moco",
        hidden: int = 1024,
        out_dim: int = 128,
        temperature: float = 0.2,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.temperature = temperature
        self.backbone = backbone
        self.projector = mlp(dim, hidden, out_dim, n_layers=3)
        self.predictor = mlp(out_dim, hidden, out_dim, n_layers=2, last_bn=False)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self._momentum_params():
            p.requires_grad_(False)

    def _momentum_params(self):
        yield from self.momentum_backbone.parameters()
        yield from self.momentum_projector.parameters()

    def _online_params(self):
        yield from self.backbone.parameters()
        yield from self.projector.parameters()

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """``momentum <- m * momentum + (1 - m) * online`` for the backbone and projector."""
        momentum = list(self._momentum_params())
        online = list(self._online_params())
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, online, alpha=1 - m)

    def _pair_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        if self.method == "byol":
            return (2 - 2 * (q * k).sum(1)).mean()
        logits = q @ k.T / self.temperature
        labels = torch.arange(len(q), device=q.device)
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Symmetric loss of two views ``x1``, ``x2`` of the same cells (row ``i`` = cell ``i``)."""
        n = len(x1)
        both = torch.cat([x1, x2])
        q = self.predictor(self.projector(self.backbone(both)))
        with torch.no_grad():
            k = self.momentum_projector(self.momentum_backbone(both))
        # one forward pass for both views (batch norm statistics over the 2n images)
        return self._pair_loss(q[:n], k[n:]) + self._pair_loss(q[n:], k[:n])
