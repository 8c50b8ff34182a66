"""The PyTorch twin of engine/benches/vit_step.rs: one MAE and one DINO
training step of a ViT (pre-norm blocks, LayerNorm eps 1e-6, erf GELU, a CLS
token and learned positions; attention through F.scaled_dot_product_attention,
what timm uses), AdamW, in images per second. The same four cases, batch and
step counts (SSLAB_BENCH_BATCH, SSLAB_BENCH_STEPS, SSLAB_BENCH_CASES);
SSLAB_BENCH_DEVICE=cuda runs them on the GPU; SSLAB_BENCH_PRECISION=bf16
runs the forward under bf16 autocast.
"""

import copy
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEVICE = torch.device(os.environ.get("SSLAB_BENCH_DEVICE", "cpu"))
CUDA = DEVICE.type == "cuda"
BATCH = int(os.environ.get("SSLAB_BENCH_BATCH", "256" if CUDA else "16"))
STEPS = max(1, int(os.environ.get("SSLAB_BENCH_STEPS", "20" if CUDA else "2")))
WANTED = [c for c in os.environ.get("SSLAB_BENCH_CASES", "").split(",") if c]
BF16 = os.environ.get("SSLAB_BENCH_PRECISION", "f32") == "bf16"

# name: (dino, image, patch, width, heads)
CASES = {
    "mae_tiny_32": (False, 32, 4, 192, 3),
    "dino_tiny_32": (True, 32, 4, 192, 3),
    "mae_small_96": (False, 96, 8, 384, 6),
    "dino_small_96": (True, 96, 8, 384, 6),
}


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def patchify(x, p):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class Vit(nn.Module):
    def __init__(self, image, patch, width, heads, depth=12):
        super().__init__()
        self.patch = patch
        grid = image // patch
        self.embed = nn.Linear(3 * patch * patch, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, width) * 0.02)
        self.blocks = nn.ModuleList([Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def tokens(self, x):
        return self.embed(patchify(x, self.patch)) + self.pos[:, 1:]

    def encode(self, tokens):
        cls = (self.cls + self.pos[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], 1)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)


class Mae(nn.Module):
    def __init__(self, image, patch, width, heads, dec=128, dec_depth=2, dec_heads=4, ratio=0.75):
        super().__init__()
        self.vit = Vit(image, patch, width, heads)
        self.patches = (image // patch) ** 2
        self.keep = int(self.patches * (1 - ratio))
        self.dec_embed = nn.Linear(width, dec)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dec) * 0.02)
        self.dec_pos = nn.Parameter(torch.randn(1, self.patches, dec) * 0.02)
        self.dec_blocks = nn.ModuleList([Block(dec, dec_heads) for _ in range(dec_depth)])
        self.dec_norm = nn.LayerNorm(dec, eps=1e-6)
        self.pred = nn.Linear(dec, 3 * patch * patch)

    def loss(self, x):
        b, l = x.shape[0], self.patches
        order = torch.rand(b, l, device=x.device).argsort(1)
        keep, masked = order[:, : self.keep], order[:, self.keep :]

        def take(t, idx):
            return torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        encoded = self.vit.encode(take(self.vit.tokens(x), keep))
        h = self.dec_embed(encoded)
        pos = self.dec_pos.expand(b, -1, -1)
        visible = h[:, 1:] + take(pos, keep)
        hidden = take(pos, masked) + self.mask_token
        d = torch.cat([h[:, :1], visible, hidden], 1)
        for blk in self.dec_blocks:
            d = blk(d)
        pred = self.pred(self.dec_norm(d)[:, 1 + self.keep :])
        target = take(patchify(x, self.vit.patch), masked)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return F.mse_loss(pred, target)


class DinoStudent(nn.Module):
    def __init__(self, image, patch, width, heads, hidden=2048, out=256, prototypes=4096):
        super().__init__()
        self.vit = Vit(image, patch, width, heads)
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.prototypes = nn.Parameter(torch.randn(prototypes, out))

    def forward(self, x):
        z = self.projector(self.vit.encode(self.vit.tokens(x))[:, 0])
        return F.normalize(z, dim=1) @ F.normalize(self.prototypes, dim=1).T


class Dino:
    def __init__(self, *shape):
        self.student = DinoStudent(*shape).to(DEVICE)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.center = torch.zeros(1, self.student.prototypes.shape[0], device=DEVICE)

    def parameters(self):
        return self.student.parameters()

    def loss(self, views):
        n = views[0].shape[0]
        both = torch.cat(views, 0)
        s = (self.student(both) / 0.1).chunk(2)
        with torch.no_grad():
            t_raw = self.teacher(both)
            t = F.softmax((t_raw - self.center) / 0.07, dim=-1).chunk(2)
            self.batch_center = t_raw.mean(0, keepdim=True)
        total = 0
        for ti in range(2):
            for si in range(2):
                if ti != si:
                    total = total + torch.sum(-t[ti] * F.log_softmax(s[si], dim=-1), dim=-1).mean()
        return total / 2

    @torch.no_grad()
    def after_step(self, m=0.996):
        self.center.mul_(0.9).add_(self.batch_center, alpha=0.1)
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def time_case(name):
    dino, image, patch, width, heads = CASES[name]
    torch.manual_seed(1)
    if dino:
        model = Dino(image, patch, width, heads)
        views = [torch.randn(BATCH, 3, image, image, device=DEVICE) for _ in range(2)]
    else:
        model = Mae(image, patch, width, heads).to(DEVICE)
        views = torch.randn(BATCH, 3, image, image, device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=DEVICE.type, dtype=torch.bfloat16, enabled=BF16):
            loss = model.loss(views)
        loss.backward()
        opt.step()
        if dino:
            model.after_step()

    for _ in range(3 if CUDA else 1):
        step()
    if CUDA:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    if CUDA:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / STEPS


def main():
    where = torch.cuda.get_device_name() if CUDA else f"cpu, {torch.get_num_threads()} threads"
    where += ", bf16 autocast" if BF16 else ""
    window_start = time.time()
    for name in CASES:
        if WANTED and name not in WANTED:
            continue
        seconds = time_case(name)
        print(f"pytorch {torch.__version__} ({where}): {name}, batch {BATCH}: {seconds:.3f} s/step, "
              f"{BATCH / seconds:.1f} images/s")
        print(f"pytorch_{name}_images_per_sec={BATCH / seconds:.3f}")
    print(f"pytorch_timed_window_unix={window_start:.3f},{time.time():.3f}")


if __name__ == "__main__":
    main()
