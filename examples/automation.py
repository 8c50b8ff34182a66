#!/usr/bin/env python3
"""Launch a projector-dimension sweep on an sslab server, wait for it, and
download its summary CSV (one row per run and layer). Standard library only.

    export SSLAB_TOKEN=sslab_…            # sslab admin create-token --user NAME | tail -1
    python3 examples/automation.py --url http://127.0.0.1:8080 \\
        --base recipes/simclr-tiny.json --dims 512-128,512-512 --out summary.csv

Without --base it sweeps a tiny built-in spec that trains in seconds on a CPU.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

TINY = {
    "name": "automation",
    "data": {"source": "scenes", "classes": 3, "train_images": 64, "test_images": 30,
             "image_size": 32, "seed": 1},
    "backbone": {"kind": "tiny_cnn", "width": 8},
    "projector": {"dims": "32-16"},
    "optimizer": {"batch_size": 16, "lr": 0.003},
    "schedule": {"epochs": 1, "warmup_epochs": 0.5},
    "eval": {"knn_k": 10},
    "seed": 3,
}


class ApiError(Exception):
    pass


class Client:
    def __init__(self, url, token):
        self.url = url.rstrip("/") + "/api/v1"
        self.token = token

    def call(self, method, path, body=None, headers=None, raw=False):
        """One request; waits out 429s as the server's Retry-After says."""
        data = None if body is None else json.dumps(body).encode()
        for _ in range(10):
            req = urllib.request.Request(self.url + path, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.token}")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    payload = resp.read()
                    return payload.decode() if raw else json.loads(payload)
            except urllib.error.HTTPError as e:
                if e.code == 429:
                    time.sleep(float(e.headers.get("Retry-After", "1")))
                    continue
                try:
                    detail = json.loads(e.read())["error"]
                    where = f" ({detail['field']})" if detail.get("field") else ""
                    message = f"{detail['message']}{where}"
                except (ValueError, KeyError):
                    message = e.reason
                raise ApiError(f"{method} {path}: {e.code} {message}") from None
        raise ApiError(f"{method} {path}: still rate limited after 10 tries")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("SSLAB_URL", "http://127.0.0.1:8080"))
    p.add_argument("--token", default=os.environ.get("SSLAB_TOKEN"),
                   help="an sslab token (default: $SSLAB_TOKEN)")
    p.add_argument("--base", help="a RunSpec as JSON; default: a tiny built-in spec")
    p.add_argument("--dims", default="32-8,32-16,32-64",
                   help="projector dims to sweep, comma-separated")
    p.add_argument("--epochs", type=int, help="override schedule.epochs")
    p.add_argument("--seeds", type=int, default=1, help="runs per point")
    p.add_argument("--out", default="summary.csv")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait")
    args = p.parse_args()
    if not args.token:
        sys.exit("set SSLAB_TOKEN or pass --token (sslab admin create-token --user NAME)")

    base = TINY
    if args.base:
        with open(args.base) as f:
            base = json.load(f)
    if args.epochs is not None:
        base.setdefault("schedule", {})["epochs"] = args.epochs
    spec = {
        "name": f"projector-dims {args.dims}",
        "base": base,
        "axes": [{"path": "projector.dims", "values": args.dims.split(",")}],
        "seeds": list(range(1, args.seeds + 1)) if args.seeds > 1 else [],
    }
    if not spec["seeds"]:
        del spec["seeds"]
    api = Client(args.url, args.token)
    try:
        # The key makes a retried launch find the sweep the first one made.
        sweep = api.call("POST", "/sweeps", spec, {"Idempotency-Key": str(uuid.uuid4())})
        print(f"sweep {sweep['id']}: {sweep['run_count']} runs", flush=True)
        deadline = time.time() + args.timeout
        last = None
        while True:
            sweep = api.call("GET", f"/sweeps/{sweep['id']}")
            c = sweep["counts"]
            state = (c["queued"], c["running"], c["succeeded"], c["failed"], c["cancelled"])
            if state != last:
                print("queued {} running {} succeeded {} failed {} cancelled {}".format(*state),
                      flush=True)
                last = state
            if c["queued"] == 0 and c["running"] == 0:
                break
            if time.time() > deadline:
                sys.exit(f"sweep {sweep['id']} did not finish within {args.timeout} s")
            time.sleep(1)
        csv = api.call("GET", f"/sweeps/{sweep['id']}/summary?format=csv", raw=True)
    except ApiError as e:
        sys.exit(f"error: {e}")
    with open(args.out, "w") as f:
        f.write(csv)
    print(f"wrote {args.out} ({len(csv.splitlines()) - 1} rows)")
    if c["failed"]:
        sys.exit(f"{c['failed']} runs failed; the summary leaves them out of the means")


if __name__ == "__main__":
    main()
