# Writes a data folder with the pre-change `sslab serve`: one finished run and
# one killed after its first epoch (left `running`, as a crash leaves it).
import json, os, signal, sqlite3, subprocess, sys, time, urllib.request, shutil
binary, out = sys.argv[1], sys.argv[2]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
p = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", out, "--static-dir", "/nonexistent"],
                     stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
line = p.stdout.readline().decode()
base = line.strip().removeprefix("sslab listening on ") + "/api/v1"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
def spec(name, epochs, images):
    return {"name": name,
            "data": {"source": "scenes", "classes": 3, "train_images": images, "test_images": 30, "image_size": 32, "seed": 1},
            "backbone": {"kind": "tiny_cnn", "width": 8}, "projector": {"dims": "32-16"},
            "optimizer": {"batch_size": 16, "lr": 0.003},
            "schedule": {"epochs": epochs, "warmup_epochs": 0.5}, "eval": {"knn_k": 10}, "seed": 3}
a = call("POST", "/runs", spec("finished", 2, 64))
while call("GET", f"/runs/{a['id']}")["status"] not in ("succeeded", "failed"):
    time.sleep(0.2)
assert call("GET", f"/runs/{a['id']}")["status"] == "succeeded"
b = call("POST", "/runs", spec("interrupted", 4, 1600))
while True:
    r = call("GET", f"/runs/{b['id']}")
    if r["status"] == "running" and r["epoch"] >= 1:
        break
    assert r["status"] in ("queued", "running"), r
    time.sleep(0.05)
p.send_signal(signal.SIGKILL)
p.wait()
con = sqlite3.connect(os.path.join(out, "sslab.db"))
con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
con.close()
for suffix in ("-wal", "-shm"):
    f = os.path.join(out, "sslab.db" + suffix)
    if os.path.exists(f):
        os.remove(f)
print(json.dumps({"finished": a["id"], "interrupted": b["id"]}))
