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


def with_grad(fn, *args):
    a = z1.clone().requires_grad_(True)
    out = fn(a, z2, *args)
    out.backward()
    return out.item(), a.grad.tolist()


out = {"z1": z1.tolist(), "z2": z2.tolist()}
for name, fn, args in [
    ("simclr_t05", nt_xent, (0.5,)),
    ("vicreg", vicreg, ()),
    ("vicreg_10_25_2", vicreg, (10.0, 25.0, 2.0)),
    ("barlow", barlow, ()),
    ("byol", byol, ()),
    ("simsiam", simsiam, ()),
    ("mocov3_t02", mocov3, (0.2,)),
]:
    value, grad = with_grad(fn, *args)
    out[name] = {"value": value, "grad_z1": grad}
out["torch_version"] = torch.__version__
print(json.dumps(out, indent=1))
