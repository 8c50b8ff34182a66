#!/usr/bin/env python3
"""Reference numbers for engine/src/cka.rs: linear CKA (Kornblith et al. 2019)
and minibatch CKA with unbiased HSIC (Nguyen et al. 2021), computed with
NumPy in the textbook form (Gram matrices, H K H centring), independently of
the Rust code's feature-space sums. The inputs are the deterministic ones
the Rust test builds.

    python3 bench/reference/cka.py > engine/src/testdata/cka.json
"""

import json

import numpy as np

N, DX, DY, BATCH = 240, 7, 5, 60


def inputs(n):
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(DX, dtype=np.float64)[None, :]
    x = (np.sin(0.37 * i + 1.3 * j) + 0.5 * np.cos(0.11 * i * (j + 1.0))).astype(np.float32)
    p = np.arange(DX, dtype=np.float64)[:, None]
    jy = np.arange(DY, dtype=np.float64)[None, :]
    w = np.sin((p + 1.0) * (jy + 2.0))
    lin = x.astype(np.float64) @ w
    y = (np.tanh(lin) + 0.3 * np.sin(0.05 * i + jy)).astype(np.float32)
    return x.astype(np.float64), y.astype(np.float64)


def linear_cka(x, y):
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    hsic = lambda a, b: np.trace(a @ b)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def hsic1(k, l):
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def minibatch_cka(x, y, batch):
    xy = xx = yy = 0.0
    for s in range(0, x.shape[0], batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        if xb.shape[0] < 4:
            break
        k, l = xb @ xb.T, yb @ yb.T
        xy += hsic1(k, l)
        xx += hsic1(k, k)
        yy += hsic1(l, l)
    return xy / np.sqrt(xx * yy)


x, y = inputs(N)
print(json.dumps({
    "n": N,
    "batch": BATCH,
    "linear": float(linear_cka(x, y)),
    "minibatch": float(minibatch_cka(x, y, BATCH)),
    "numpy": np.__version__,
}, indent=2))
