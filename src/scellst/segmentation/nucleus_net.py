"""The learned nucleus segmenter's network and its per-pixel inference (imports torch).

:class:`NucleusNet`: the first four stages of EfficientNet-Lite0 (strides 2-16; the
architecture of ``efficientnet-lite-pytorch``) under a light feature-pyramid decoder and a
full-resolution branch, giving three classes per pixel at the input's resolution: background,
nucleus interior, nucleus boundary (the nucleus pixels that touch another label, what separates
touching nuclei). 0.73 M parameters with the full-resolution branch (0.72 M without).

:func:`probabilities`: the class probabilities of an RGB image of any size, in overlapping
windows (memory bounded by the window, not the image). :func:`instances`: label image from the
probabilities (one seed per peak of the interior's distance map, grown by a watershed over the
foreground).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed
from torch import nn

#: Classes of the network's output, in channel order.
CLASSES = ("background", "interior", "boundary")
#: Input normalisation: RGB in [0, 1] mapped by (x - MEAN) / STD.
MEAN, STD = 0.5, 0.25
#: Largest side of the windows the network runs on, in working pixels (memory per window).
WINDOW = 768
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

    ``H`` and ``W`` must be multiples of :data:`STRIDE`. The decoder ends at stride 2; with
    ``fine_width > 0`` a branch on the input pixels is mixed in at full resolution, because the
    one-pixel boundary between two touching nuclei is finer than stride 2 can draw (on MoNuSeg,
    same training: AJI 0.457 with it, 0.440 without). ``fine_width=0`` is the earlier network.
    """

    def __init__(self, decoder_width: int = 32, fine_width: int = 16):
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
        self.fine_width = int(fine_width)
        if self.fine_width:
            f = self.fine_width
            self.fine = nn.Sequential(
                nn.Conv2d(3, f, 3, padding=1), nn.BatchNorm2d(f), nn.ReLU(True)
            )
            self.mix = nn.Sequential(  # pointwise then depthwise: cheap at full resolution
                nn.Conv2d(decoder_width + f, f, 1), nn.BatchNorm2d(f), nn.ReLU(True),
                nn.Conv2d(f, f, 3, padding=1, groups=f), nn.BatchNorm2d(f), nn.ReLU(True),
            )  # fmt: skip
        self.head = nn.Conv2d(self.fine_width or decoder_width, len(CLASSES), 1)

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
        y = nn.functional.interpolate(self.smooth(y), size=(h, w), mode="bilinear")
        if self.fine_width:
            y = self.mix(torch.cat([y, self.fine(x)], 1))
        return self.head(y)


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


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively: CUDA, or a CPU with AMX or
    AVX-512 BF16 (elsewhere bfloat16 is emulated and slower than float32)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":  # private torch probes: absent in some versions, then say no
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast(device: torch.device | str, precision: str):
    """Context of the network's forward passes: ``"bfloat16"`` autocasts, ``"float32"`` not."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@torch.inference_mode()
def probabilities(
    net: NucleusNet,
    rgb: np.ndarray,
    *,
    window: int = WINDOW,
    overlap: int = 32,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    mask: np.ndarray | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Class probabilities ``(3, H, W)`` float32 of an RGB image, window by window.

    Windows of at most ``window`` px overlap by ``overlap`` px on each side; each pixel takes the
    value of the window whose centre part holds it, so seams carry no edge effects. The windows
    are sized to cover the image evenly: fixed 512 px windows spent 1.6x the image's pixels on a
    2,814 px tile, these 1.2x. One window per forward pass (``batch_size``) ran 1.5x faster on 2
    CPU cores than batches of 4. Inputs go in channels-last order, which the CPU convolutions
    run about 1.8x faster on. With ``mask``
    (``(H, W)`` bool, e.g. the tissue), windows whose centre part holds no mask pixel are not run
    and read as background. ``precision="bfloat16"`` runs the convolutions in bfloat16 (2.1x
    faster on a CPU with AMX; MoNuSeg scores within 0.001 of float32).
    """
    net = net.to(memory_format=torch.channels_last)  # in place; a no-op once done

    def run(batch: torch.Tensor) -> np.ndarray:
        with autocast(device, precision):
            logits = net(batch.to(device, memory_format=torch.channels_last))
        return torch.softmax(logits.float(), 1).cpu().numpy()

    h, w = rgb.shape[:2]
    pad_y, pad_x = -h % STRIDE, -w % STRIDE
    if h + pad_y <= window and w + pad_x <= window:  # one window: the whole image
        x = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        return run(to_input(x)[None])[0, :, :h, :w]
    sy, sx = _step(h, window, overlap), _step(w, window, overlap)
    x = np.pad(rgb, ((overlap, overlap + sy), (overlap, overlap + sx), (0, 0)), mode="reflect")
    out = np.zeros((len(CLASSES), h, w), np.float32)
    out[0] = 1.0  # background where no window runs
    corners = [(y, x0) for y in range(0, h, sy) for x0 in range(0, w, sx)]
    if mask is not None:
        corners = [(y, x0) for y, x0 in corners if mask[y : y + sy, x0 : x0 + sx].any()]
    wy, wx = sy + 2 * overlap, sx + 2 * overlap
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        p = run(torch.stack([to_input(x[y : y + wy, x0 : x0 + wx]) for y, x0 in chunk]))
        for (y, x0), pi in zip(chunk, p, strict=True):
            hh, ww = min(sy, h - y), min(sx, w - x0)
            out[:, y : y + hh, x0 : x0 + ww] = pi[:, overlap : overlap + hh, overlap : overlap + ww]
    return out


def _step(n: int, window: int, overlap: int) -> int:
    """Centre part of the windows covering ``n`` px: as few windows of at most ``window`` px
    as possible, each the same, a multiple of the network's stride."""
    k = -(-n // (window - 2 * overlap))
    return -(-n // (k * STRIDE)) * STRIDE


def instances(prob: np.ndarray, min_area_px: float, max_area_px: float) -> np.ndarray:
    """Nucleus label image (int32, 0 = background) from class probabilities ``(3, H, W)``.

    The relief is the distance to the nearest non-interior pixel (``p(interior) <= 0.5``),
    smoothed by one pixel, plus twice ``p(interior)``; its peaks at least one pixel high
    (h-maxima) inside the interior are the seeds, grown by a watershed on the relief over the
    foreground ``p(interior) + p(boundary) > 0.5``. The distance splits chains of touching nuclei
    that the boundary class leaves joined (MoNuSeg AJI 0.485 vs 0.457 seeding on the connected
    interiors). Instances outside the area range (in working pixels) are dropped.
    """
    inside = prob[1] > 0.5
    fg = (prob[1] + prob[2]) > 0.5
    if not inside.any():
        return np.zeros(prob.shape[1:], np.int32)
    relief = ndi.gaussian_filter(ndi.distance_transform_edt(inside).astype(np.float32), 1.0)
    relief += 2.0 * prob[1]
    seeds = _seeds(relief) * inside
    labels = watershed(-relief, seeds, mask=fg).astype(np.int32)
    areas = np.bincount(labels.ravel())
    drop = (areas < min_area_px) | (areas > max_area_px)
    drop[0] = False
    if drop.any():
        labels[drop[labels]] = 0
    return labels


def _seeds(relief: np.ndarray, h: float = 1.0) -> np.ndarray:
    """The h-maxima of ``relief``, labelled, found on its 2x2 max-pooled copy: 4x fewer pixels
    for the slowest step of :func:`instances` (2x faster in all; MoNuSeg AJI unchanged), each
    seed then covering its blocks at full resolution."""
    H, W = relief.shape
    r = np.pad(relief, ((0, H % 2), (0, W % 2)), mode="edge")
    pooled = r.reshape(r.shape[0] // 2, 2, r.shape[1] // 2, 2).max(axis=(1, 3))
    seeds, _ = ndi.label(h_maxima(pooled, h))
    return np.repeat(np.repeat(seeds, 2, 0), 2, 1)[:H, :W]
