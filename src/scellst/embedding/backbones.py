"""Cell-image backbones: a small ResNet for 48-px nucleus crops, and torchvision/timm models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: The architectures of :func:`build_backbone` defined here (any torchvision or timm
#: classification model name is accepted too).
SMALL_ARCHS = {
    "resnet_small": {"widths": (32, 64, 128, 256), "blocks": (1, 1, 1, 1)},
    "resnet_tiny": {"widths": (16, 32, 64, 128), "blocks": (1, 1, 1, 1)},
    "resnet_small_wide": {"widths": (32, 64, 128, 256), "strides": (1, 2, 2, 2)},
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (ResNet-18 block)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for small cell crops (48 px): 3x3 stride-2 stem, residual stages, global pooling.

    With the defaults the 48-px input becomes 24, 12, 6, 3 and 2 pixels wide through the stem
    and the four stages (one basic block each), and the output is the ``widths[-1]``-dimensional
    average-pooled feature: about 11 M multiply-adds per 48-px crop with
    ``widths=(32, 64, 128, 256)``, cheap enough to train on a CPU.

    Parameters
    ----------
    widths
        Channels of each stage.
    blocks
        Basic blocks per stage (default one).
    strides
        Stride of the first block of each stage (default 2 everywhere).
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
    ):
        super().__init__()
        blocks = tuple(blocks) if blocks is not None else (1,) * len(widths)
        strides = tuple(strides) if strides is not None else (2,) * len(widths)
        if not widths or not len(widths) == len(blocks) == len(strides):
            raise ValueError("`widths`, `blocks` and `strides` must be non-empty, of one length.")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        prev = widths[0]
        for width, n, stride in zip(widths, blocks, strides, strict=True):
            for j in range(n):
                layers.append(BasicBlock(prev, width, stride=stride if j == 0 else 1))
                prev = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    """Names of timm's models (empty when timm is not installed)."""
    try:
        import timm
    except ImportError:
        return []
    return list(timm.list_models())


def is_known_arch(name: str) -> bool:
    """Whether :func:`build_backbone` knows architecture ``name``."""
    return name in SMALL_ARCHS or name in torchvision_names() or name in timm_names()


def strip_head(model: nn.Module) -> nn.Module:
    """Replace the last linear layer (the classifier) of ``model`` by the identity, in place."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no linear classifier layer to remove; wrap a module "
            "that returns features with sst.tl.TorchEncoder instead."
        )
    parent = model
    *path, leaf = last.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, nn.Identity())
    return model


def build_backbone(arch: str) -> nn.Module:
    """An untrained feature extractor ``(n, 3, S, S) -> (n, d)`` (never downloads weights).

    Parameters
    ----------
    arch
        ``"resnet_small"`` / ``"resnet_tiny"`` / ``"resnet_small_wide"`` (:class:`SmallResNet`
        with the settings of ``SMALL_ARCHS``; ``_wide``: first stage at stride 1), a torchvision
        classification model name (e.g. ``"resnet50"``; built with ``weights=None`` and its
        classifier replaced by the identity), or a timm model name when timm is installed
        (``timm.create_model(arch, pretrained=False, num_classes=0)``).

    Returns
    -------
    torch.nn.Module
        The randomly initialised backbone.
    """
    if arch in SMALL_ARCHS:
        return SmallResNet(**SMALL_ARCHS[arch])
    if arch in torchvision_names():
        import torchvision

        kwargs = {"aux_logits": False} if arch in ("inception_v3", "googlenet") else {}
        if arch == "googlenet":
            kwargs["init_weights"] = True
        return strip_head(torchvision.models.get_model(arch, weights=None, **kwargs))
    if arch in timm_names():
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=0)
    raise ValueError(
        f"Unknown architecture {arch!r}: use one of {sorted(SMALL_ARCHS)}, a torchvision "
        "classification model name (torchvision.models.list_models()) or, with timm installed, "
        "a timm model name."
    )


@torch.no_grad()
def output_dim(module: nn.Module, size: int) -> int:
    """Feature dimension of ``module`` on ``(n, 3, size, size)`` inputs (one dummy forward pass
    on two blank images, in evaluation mode)."""
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = module(torch.zeros(2, 3, size, size, device=device))
    finally:
        module.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"The encoder module returned shape {tuple(out.shape)} for (2, 3, {size}, {size}) "
            "inputs; it must return one feature vector per image, shape (n, dim)."
        )
    return int(out.shape[1])
