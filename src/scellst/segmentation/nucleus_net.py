"""The learned nucleus segmenter's network and its per-pixel inference (imports torch).

:class:`NucleusNet`: the first four stages of EfficientNet-Lite0 (strides 2-16; the
architecture of ``efficientnet-lite-pytorch``) under a light feature-pyramid decoder, giving three
classes per pixel at the input's resolution: background, nucleus interior, nucleus boundary (the
nucleus pixels that touch another label, what separates touching nuclei). 0.72 M parameters.

:func:`probabilities`: the class probabilities of an RGB image of any size, in overlapping
windows (memory bounded by the window, not the image). :func:`instances`: label image from the
probabilities (seeds = confident interiors, grown by a watershed over the foreground).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.segmentation import watershed
from torch import nn

#: Classes of the network's output, in channel order.
CLASSES = ("background", "interior", "boundary")
#: Input normalisation: RGB in [0, 1] mapped by (x - MEAN) / STD.
MEAN, STD = 0.5, 0.25
#: The encoder's coarsest stride: inputs are padded to a multiple of it.
STRIDE = 16


def _lite0_stages() -> tuple[nn.Module, nn.ModuleList]:
    """Stem and MBConv blocks of EfficientNet-Lite0 up to stride 16 (random weights)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # a core dependency: only a broken install gets here
        raise ImportError(
            "The learned nucleus segmenter needs the EfficientNet-Lite architecture package: "
            "pip install efficientnet-lite-pytorch"
        ) from e
    net = EfficientNet.from_name("efficientnet-lite0")
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
    blocks, size, strides = nn.ModuleList(), 64, 1  # keep blocks until the stride-32 one
    x = stem(torch.zeros(1, 3, size, size))
    for block in net._blocks:
        y = block(x)
        if y.shape[-1] < x.shape[-1]:
            strides += 1
            if strides == 5:  # stride 32: not used
                break
        blocks.append(block)
        x = y
    return stem, blocks


class NucleusNet(nn.Module):
    """Three-class nucleus network: ``(n, 3, H, W)`` normalised RGB -> ``(n, 3, H, W)`` logits.

    ``H`` and ``W`` must be multiples of :data:`STRIDE`.
    """

    def __init__(self, decoder_width: int = 32):
        super().__init__()
        self.stem, self.blocks = _lite0_stages()
        with torch.no_grad():
            widths = [f.shape[1] for f in self._features(torch.zeros(1, 3, 64, 64))]
        self.lateral = nn.ModuleList(nn.Conv2d(w, decoder_width, 1) for w in widths)
        self.smooth = nn.Sequential(
            nn.Conv2d(decoder_width, decoder_width, 3, padding=1),
            nn.BatchNorm2d(decoder_width),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(decoder_width, len(CLASSES), 1)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last map at each of strides 2, 4, 8, 16."""
        x = self.stem(x)
        out = []
        for block in self.blocks:
            y = block(x)
            if y.shape[-1] != x.shape[-1]:
                out.append(x)
            x = y
        return [*out, x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = self._features(x)
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            y = nn.functional.interpolate(y, size=f.shape[-2:], mode="bilinear") + lat(f)
        y = self.head(self.smooth(y))
        return nn.functional.interpolate(y, size=(h, w), mode="bilinear")


def load_imagenet_encoder(net: NucleusNet, state: dict[str, torch.Tensor]) -> None:
    """Copy the ImageNet EfficientNet-Lite0 weights (``_conv_stem.*``, ``_bn0.*``, ``_blocks.*``)
    into ``net``'s encoder; the decoder keeps its random initialisation."""
    mapped = {}
    for k, v in state.items():
        if k.startswith("_conv_stem."):
            mapped["stem.0." + k.removeprefix("_conv_stem.")] = v
        elif k.startswith("_bn0."):
            mapped["stem.1." + k.removeprefix("_bn0.")] = v
        elif k.startswith("_blocks."):
            i = int(k.split(".")[1])
            if i < len(net.blocks):
                mapped["blocks." + k.removeprefix("_blocks.")] = v
    missing = [
        k for k in net.state_dict() if k.startswith(("stem.", "blocks.")) and k not in mapped
    ]
    if missing:
        raise ValueError(
            f"ImageNet weights lack {len(missing)} encoder tensors, e.g. {missing[0]}."
        )
    net.load_state_dict(mapped, strict=False)


def to_input(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 or [0, 1] float RGB -> ``(3, H, W)`` normalised float tensor."""
    x = np.asarray(rgb, np.float32)
    if rgb.dtype == np.uint8:
        x = x / 255.0
    return torch.from_numpy((x - MEAN) / STD).permute(2, 0, 1).contiguous()


@torch.inference_mode()
def probabilities(
    net: NucleusNet,
    rgb: np.ndarray,
    *,
    window: int = 512,
    overlap: int = 32,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Class probabilities ``(3, H, W)`` float32 of an RGB image, window by window.

    Windows of ``window`` px overlap by ``overlap`` px on each side; each pixel takes the value of
    the window whose centre part holds it, so seams carry no edge effects. Inputs go in
    channels-last order, which the CPU convolutions run about 1.8x faster on. With ``mask``
    (``(H, W)`` bool, e.g. the tissue), windows whose centre part holds no mask pixel are not run
    and read as background.
    """
    net = net.to(memory_format=torch.channels_last)  # in place; a no-op once done
    h, w = rgb.shape[:2]
    step = window - 2 * overlap
    pad_y, pad_x = -h % STRIDE, -w % STRIDE
    if h + pad_y <= window and w + pad_x <= window:  # one window: the whole image
        x = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        batch = to_input(x)[None].to(device, memory_format=torch.channels_last)
        p = torch.softmax(net(batch), 1)[0].cpu().numpy()
        return p[:, :h, :w]
    x = np.pad(rgb, ((overlap, overlap + step), (overlap, overlap + step), (0, 0)), mode="reflect")
    out = np.zeros((len(CLASSES), h, w), np.float32)
    out[0] = 1.0  # background where no window runs
    corners = [(y, x0) for y in range(0, h, step) for x0 in range(0, w, step)]
    if mask is not None:
        corners = [(y, x0) for y, x0 in corners if mask[y : y + step, x0 : x0 + step].any()]
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        batch = torch.stack([to_input(x[y : y + window, x0 : x0 + window]) for y, x0 in chunk])
        p = torch.softmax(net(batch.to(device, memory_format=torch.channels_last)), 1).cpu().numpy()
        for (y, x0), pi in zip(chunk, p, strict=True):
            hh, ww = min(step, h - y), min(step, w - x0)
            out[:, y : y + hh, x0 : x0 + ww] = pi[:, overlap : overlap + hh, overlap : overlap + ww]
    return out


def instances(prob: np.ndarray, min_area_px: float, max_area_px: float) -> np.ndarray:
    """Nucleus label image (int32, 0 = background) from class probabilities ``(3, H, W)``.

    Seeds are the connected confident interiors (``p(interior) > 0.5``, opened once so that a thin
    bridge does not join two nuclei); a watershed on ``-p(interior)`` grows them over the
    foreground ``p(interior) + p(boundary) > 0.5``. Instances outside the area range are dropped.
    """
    inside = prob[1] > 0.5
    fg = (prob[1] + prob[2]) > 0.5
    if not inside.any():
        return np.zeros(prob.shape[1:], np.int32)
    seeds, _ = ndi.label(ndi.binary_opening(inside))
    labels = watershed(-prob[1], seeds, mask=fg).astype(np.int32)
    areas = np.bincount(labels.ravel())
    drop = (areas < min_area_px) | (areas > max_area_px)
    drop[0] = False
    if drop.any():
        labels[drop[labels]] = 0
    return labels
