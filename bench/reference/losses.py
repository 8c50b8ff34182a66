"""Reference values for the SSL losses, computed with PyTorch the way the
authors' code and the common libraries compute them. Run once; the output
is checked in as engine/src/method/testdata/losses.json and the Rust tests
compare against it (they need no Python).

    python3 bench/reference/losses.py > engine/src/method/testdata/losses.json
"""

import json

import torch
import torch.nn.functional as F

torch.manual_seed(0)
N, D = 8, 6
z1 = torch.randn(N, D, dtype=torch.float64)
z2 = (0.6 * z1 + 0.8 * torch.randn(N, D, dtype=torch.float64))
# Prototypes for DINO, SwAV, MSN and PMSN (drawn after z1, z2 so that those
# stay what they were).
K = 5
protos = torch.randn(K, D, dtype=torch.float64)
center = 0.05 * torch.arange(K, dtype=torch.float64).unsqueeze(0)
mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float64).view(1, N, 1)


def nt_xent(a, b, t):
    # lightly NTXentLoss / SimCLR: 2N views, self-similarity masked out.
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / t
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def off_diagonal(x):
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg(x, y, lam=25.0, mu=25.0, nu=1.0):
    # facebookresearch/vicreg main_vicreg.py
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (x.shape[0] - 1)
    cov_y = (y.T @ y) / (y.shape[0] - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(x.shape[1]) + off_diagonal(cov_y).pow_(2).sum().div(x.shape[1])
    return lam * repr_loss + mu * std_loss + nu * cov_loss


def barlow(x, y, lam=5e-3):
    # facebookresearch/barlowtwins main.py: BatchNorm1d(affine=False) in training mode.
    bn = torch.nn.BatchNorm1d(x.shape[1], affine=False).double()
    c = bn(x).T @ bn(y) / x.shape[0]
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lam * off_diag


def byol(p, z):
    # solo-learn byol_loss_func
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam(p, z):
    # solo-learn simsiam_loss_func
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def mocov3(q, k, t):
    # facebookresearch/moco-v3 moco/builder.py contrastive_loss
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / t
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * t)


def single_negative(a, b, t):
    # arXiv:2303.01986: one negative per positive pair, the next image's other view.
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)

    def one_way(x, y):
        pos = (x * y).sum(1) / t
        neg = (x * torch.roll(y, -1, 0)).sum(1) / t
        logits = torch.stack([pos, neg], 1)
        return F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long))

    return (one_way(a, b) + one_way(b, a)) / 2


def cos(z):
    return F.normalize(z, dim=1) @ F.normalize(protos, dim=1).T


def dino(a, b, ts=0.1, tt=0.04):
    # facebookresearch/dino DINOLoss.forward; student views [a, b], teacher
    # (global) views [b, b²] so that the targets do not depend on a.
    student = [cos(a) / ts, cos(b) / ts]
    teacher = [F.softmax((cos(x) - center) / tt, dim=-1).detach() for x in (b, b * b)]
    total, terms = 0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def sinkhorn(out, eps=0.05, iters=3):
    # facebookresearch/swav distributed_sinkhorn on one process.
    return balance(torch.exp(out / eps), iters)


@torch.no_grad()
def balance(q, iters):
    # The iterations of swav's and msn's distributed_sinkhorn on one process.
    Q = q.t().clone()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def swav(a, b, t=0.1):
    # facebookresearch/swav main_swav.py loss; codes from the views [b, b²].
    scores = [cos(a), cos(b)]
    codes = [sinkhorn(cos(x)) for x in (b, b * b)]
    loss = 0
    for i, q in enumerate(codes):
        sub = 0
        for v in [v for v in range(len(scores)) if v != i]:
            sub -= torch.mean(torch.sum(q * F.log_softmax(scores[v] / t, dim=1), dim=1))
        loss += sub / (len(scores) - 1)
    return loss / len(codes)


def msn(a, b, power=0.0, use_sinkhorn=False, tau=0.1, T=0.25, lam=1.0):
    # facebookresearch/msn src/losses.py (snn, sharpen, optional sinkhorn,
    # me-max); two anchor views [a, a²], target b. PMSN: KL(p̄‖π),
    # π_k ∝ k^-power (stable-pretraining).
    anchor = torch.cat([cos(a), cos(a * a)])
    probs = F.softmax(anchor / tau, dim=1)
    with torch.no_grad():
        p = F.softmax(cos(b) / tau, dim=1)
        sharp = p ** (1.0 / T)
        sharp /= sharp.sum(dim=1, keepdim=True)
        if use_sinkhorn:
            sharp = balance(sharp, 3)
        targets = torch.cat([sharp, sharp])
    loss = torch.mean(torch.sum(torch.log(probs ** (-targets)), dim=1))
    avg = probs.mean(dim=0)
    prior = torch.arange(1, K + 1, dtype=torch.float64) ** (-power)
    prior /= prior.sum()
    return loss + lam * torch.sum(avg * (torch.log(avg) - torch.log(prior)))


def mae(pred, target, norm_pix):
    # facebookresearch/mae forward_loss on the masked patches.
    pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return ((pred - target) ** 2).mean()


def simmim(pred, target):
    # microsoft/SimMIM: L1 on masked patches, per masked pixel value.
    pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    err = (pred - target).abs() * mask
    return err.sum() / (mask.sum() * pred.shape[-1] + 1e-5)


def with_grad(fn, *args):
    a = z1.clone().requires_grad_(True)
    out = fn(a, z2, *args)
    out.backward()
    return out.item(), a.grad.tolist()


out = {"z1": z1.tolist(), "z2": z2.tolist(), "protos": protos.tolist()}
for name, fn, args in [
    ("simclr_t05", nt_xent, (0.5,)),
    ("vicreg", vicreg, ()),
    ("vicreg_10_25_2", vicreg, (10.0, 25.0, 2.0)),
    ("barlow", barlow, ()),
    ("byol", byol, ()),
    ("simsiam", simsiam, ()),
    ("mocov3_t02", mocov3, (0.2,)),
    ("simclr_single_t05", single_negative, (0.5,)),
    ("dino", dino, ()),
    ("swav", swav, ()),
    ("msn", msn, ()),
    ("msn_sinkhorn", msn, (0.0, True)),
    ("pmsn_025", msn, (0.25,)),
    ("mae", mae, (False,)),
    ("mae_norm_pix", mae, (True,)),
    ("simmim", simmim, ()),
]:
    value, grad = with_grad(fn, *args)
    out[name] = {"value": value, "grad_z1": grad}
out["torch_version"] = torch.__version__
print(json.dumps(out, indent=1))
