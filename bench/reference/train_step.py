"""The PyTorch twin of engine/benches/train_step.rs: one SimCLR step of a
ResNet-18 with the CIFAR stem (3x3 conv1, no max-pool) on two 32 px views,
NT-Xent, backward, AdamW, in images per second. Same batch and step counts
from SSLAB_BENCH_BATCH and SSLAB_BENCH_STEPS; SSLAB_BENCH_DEVICE=cuda runs it
on the GPU (bench/gpu/train-step.sh); SSLAB_BENCH_PRECISION=bf16 runs the
forward under bf16 autocast.
"""

import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEVICE = torch.device(os.environ.get("SSLAB_BENCH_DEVICE", "cpu"))
BF16 = os.environ.get("SSLAB_BENCH_PRECISION", "f32") == "bf16"
BATCH = int(os.environ.get("SSLAB_BENCH_BATCH", "256"))
STEPS = max(1, int(os.environ.get("SSLAB_BENCH_STEPS", "30" if DEVICE.type == "cuda" else "3")))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet18(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, stride in enumerate([1, 2, 2, 2]):
            cout = width * 2 ** i
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.projector = nn.Sequential(nn.Linear(cin, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128))

    def forward(self, x):
        h = self.layers(self.stem(x)).mean(dim=(2, 3))
        return self.projector(h)


def nt_xent(z, n, t=0.2):
    z = F.normalize(z, dim=1)
    logits = z @ z.T / t
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def main():
    torch.manual_seed(1)
    model = ResNet18().to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    views = torch.randn(2 * BATCH, 3, 32, 32, device=DEVICE)
    cuda = DEVICE.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16, enabled=BF16):
            z = model(views)
        loss = nt_xent(z.float(), BATCH)
        loss.backward()
        opt.step()

    for _ in range(3 if cuda else 1):
        step()
    sync()
    window_start = time.time()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    sync()
    seconds = (time.perf_counter() - started) / STEPS
    window_end = time.time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = f"{torch.cuda.get_device_name()}" if cuda else f"cpu, {torch.get_num_threads()} threads"
    where += ", bf16 autocast" if BF16 else ""
    gpu_peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
    print(f"pytorch {torch.__version__} ({where}): resnet18 cifar stem, batch {BATCH} x 2 views of 32 px: "
          f"{seconds:.3f} s/step, {BATCH / seconds:.1f} images/s, peak RSS {peak:.0f} MiB{gpu_peak}")
    print(f"pytorch_images_per_sec={BATCH / seconds:.3f}")
    print(f"pytorch_timed_window_unix={window_start:.3f},{window_end:.3f}")


if __name__ == "__main__":
    main()
