"""The torchvision twin of engine/benches/augment.rs: two SimCLR views per
image (RandomResizedCrop, horizontal flip, ColorJitter, RandomGrayscale,
ToTensor, Normalize) on the images that bench wrote to
target/bench-augment/, with its settings, on one thread. Both of
torchvision's paths are timed: PIL images (the classic pipeline) and uint8
tensors (transforms.v2).
"""

import json
import os
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

DIR = os.path.join(os.path.dirname(__file__), "..", "..", "target", "bench-augment")
torch.set_num_threads(1)
spec = json.load(open(os.path.join(DIR, "spec.json")))
s = spec["jitter_strength"]
MEAN, STD = [0.5] * 3, [0.25] * 3


def classic(side):
    return T.Compose([
        T.RandomResizedCrop(side, scale=(spec["crop_min_scale"], spec["crop_max_scale"])),
        T.RandomHorizontalFlip(spec["flip_prob"]),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=spec["jitter_prob"]),
        T.RandomGrayscale(spec["grayscale_prob"]),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def tensor(side):
    return v2.Compose([
        v2.RandomResizedCrop(side, scale=(spec["crop_min_scale"], spec["crop_max_scale"]), antialias=True),
        v2.RandomHorizontalFlip(spec["flip_prob"]),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=spec["jitter_prob"]),
        v2.RandomGrayscale(spec["grayscale_prob"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def best_of(fn, items, rounds=3):
    best = float("inf")
    for r in range(rounds + 1):
        t = time.perf_counter()
        for x in items:
            fn(x)
            fn(x)
        if r > 0:
            best = min(best, time.perf_counter() - t)
    return len(items) / best


for side in (32, 96):
    raw = np.fromfile(os.path.join(DIR, f"images-{side}.u8"), dtype=np.uint8)
    images = raw.reshape(-1, side, side, 3)
    # torchvision gets far fewer images: it is timed on one thread.
    images = images[: max(64, len(images) // 4)]
    pil = [Image.fromarray(im) for im in images]
    chw = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
    a = best_of(classic(side), pil)
    b = best_of(tensor(side), chw)
    print(f"torchvision_pil_{side}_images_per_sec={a:.1f}")
    print(f"torchvision_tensor_{side}_images_per_sec={b:.1f}")
