#!/usr/bin/env bash
# On a GPU machine, from the repository root: the CUDA build of the
# train-step bench next to the same model and step in PyTorch on the same GPU,
# with the GPU's utilisation and memory sampled while each one's timed steps
# run, in f32 and in bf16 (our `optimizer.precision = "bf16"` against
# PyTorch's bf16 autocast); then two recipes trained end to end with the CUDA
# `sslab`: SimCLR's ResNet-18 recipe cut to two epochs on 10 240 built-in
# images, whose metrics give the fraction of step time spent waiting for
# data, and the tiny SimCLR recipe.
#
# Build here first (`cargo xtask cuda`, or `cargo xtask cuda --cudnn`) and
# bring target/cuda/bin along, or its packed copy target/cuda/carry (xz),
# which this script unpacks. The GPU machine needs the NVIDIA driver,
# python3 with a CUDA build of torch, and the CUDA libraries our binaries
# link (cuBLAS, cuRAND, NVRTC, cudart, and cuDNN for --cudnn builds): they
# are taken from the nvidia-* wheels next to torch.
#
# SSLAB_GPU_PROFILE=1 adds, where Nsight Compute (`ncu`) is installed, the
# GPU time of every kernel in one f32 and one bf16 step (with the warm-up and
# the checks), summed by kernel, the largest first; the raw CSV goes to $OUT.
#
# SSLAB_CUDA_BEFORE names a folder of another build's packed binaries (the
# target/cuda/carry of an earlier commit): its bench runs too, f32 and bf16,
# for a before and after on the same GPU.
#
# SSLAB_GPU_RECIPES=0 leaves the two recipes out (bench/gpu/all.sh does).
#
# Each stage has its own time limit and a failed stage does not stop the
# next: one call on a lent machine should bring back every figure it can.
# Results go to stdout and, when $OUT is set, to $OUT/gpu-train-step.txt.
# The last line is `train_step_ratio_vs_pytorch_cuda=<ours / theirs>` (f32).
set -uo pipefail

work=$(mktemp -d)
log=${OUT:-$work}/gpu-train-step.txt
exec > >(tee "$log") 2>&1
source "$(dirname "$0")/lib.sh"

export SSLAB_BENCH_BATCH=${SSLAB_BENCH_BATCH:-256}
export SSLAB_BENCH_STEPS=${SSLAB_BENCH_STEPS:-100}
export PYTHONUNBUFFERED=1
device=${SSLAB_BENCH_DEVICE:-cuda}
sampled sslab 90 "$bin/train_step"
if ! grep -q "candle, Cuda" "$work/sslab.out"; then
    echo "the CUDA build found no GPU or driver, or failed (lines above)"
    [[ ${SSLAB_ALLOW_CPU:-0} == 1 ]] || exit 1
fi
SSLAB_BENCH_DEVICE=$device sampled pytorch 90 python3 bench/reference/train_step.py
SSLAB_BENCH_PRECISION=bf16 sampled sslab_bf16 90 "$bin/train_step"
SSLAB_BENCH_PRECISION=bf16 SSLAB_BENCH_DEVICE=$device \
    sampled pytorch_bf16 90 python3 bench/reference/train_step.py
if [[ -n $before ]]; then
    sampled before 90 "$before/train_step"
    SSLAB_BENCH_PRECISION=bf16 sampled before_bf16 90 "$before/train_step"
fi

# train LABEL SECONDS SPEC: `sslab train` on the GPU, then the run's
# throughput and data wait read back from its metrics.
train() {
    local label=$1 limit=$2 spec=$3
    echo "== $label ($spec)"
    local started=$SECONDS
    timeout "$limit" "$bin/sslab" train --spec "$spec" --out "$work/$label" >"$work/$label.log" 2>&1
    local rc=$?
    tail -n 12 "$work/$label.log"
    echo "$label: exit $rc after $((SECONDS - started)) s"
    python3 - "$label" "$work/$label/metrics.jsonl" <<'EOF'
import json, sys
label, path = sys.argv[1:]
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    sys.exit(f"{label}: no metrics")
rows = rows[1:] or rows  # the first step loads the kernels
mean = lambda k: sum(r[k] for r in rows) / len(rows)
print(f"{label}: {len(rows) + 1} steps, last loss {rows[-1]['loss']:.4f}, "
      f"{mean('images_per_sec'):.0f} images/s, data wait {100 * mean('data_wait'):.1f} % of step time")
EOF
}
# SimCLR's recipe as it is but for its length: ResNet-18, batch 256, LARS.
sed -e '0,/^name = /s/^name = .*/name = "simclr-gpu-check"/' -e 's/^train_images = .*/train_images = 10240/' \
    -e 's/^test_images = .*/test_images = 2000/' -e 's/^epochs = .*/epochs = 2/' \
    -e 's/^warmup_epochs = .*/warmup_epochs = 0.5/' \
    -e 's/^\[eval\]$/[eval]\nprobes = ["knn"]\nlayers = ["backbone"]/' \
    recipes/simclr.toml >"$work/simclr-gpu.toml"
if [[ ${SSLAB_GPU_RECIPES:-1} == 1 ]]; then
    train simclr_resnet18 150 "$work/simclr-gpu.toml"
    train simclr_tiny 60 recipes/simclr-tiny.toml
fi

if [[ ${SSLAB_GPU_PROFILE:-0} == 1 ]]; then
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
    for precision in f32 bf16; do
        echo "== kernels of one $precision step (ncu)"
        [[ -n $ncu_bin ]] || { echo "no ncu here"; break; }
        csv=${OUT:-$work}/ncu-$precision.csv
        SSLAB_BENCH_PRECISION=$precision SSLAB_BENCH_STEPS=1 timeout 150 "$ncu_bin" \
            --clock-control none --metrics gpu__time_duration.sum --print-units base \
            --csv --page raw --log-file "$csv" "$bin/train_step" >"$work/ncu-$precision.out" 2>&1 ||
            { echo "ncu failed:"; tail -n 5 "$work/ncu-$precision.out"; continue; }
        python3 - "$csv" <<'EOF'
import collections, csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
name, time = rows[head].index("Kernel Name"), rows[head].index("gpu__time_duration.sum")
total, count = collections.Counter(), collections.Counter()
for r in rows[head + 1:]:
    try:
        ns = float(r[time].replace(",", ""))
    except (ValueError, IndexError):
        continue  # the units row
    total[r[name][:90]] += ns
    count[r[name][:90]] += 1
all_ns = sum(total.values())
print(f"{sum(count.values())} kernels, {all_ns / 1e6:.1f} ms (4 steps and the checks)")
for kernel, ns in total.most_common(20):
    print(f"{ns / 1e6:8.2f} ms {100 * ns / all_ns:5.1f} % x{count[kernel]:<5d} {kernel}")
EOF
    done
fi

python3 - "$work" <<'EOF'
import sys
def figure(label, key):
    path = f"{sys.argv[1]}/{label}.out"
    return next(float(l.split("=")[1]) for l in open(path) if l.startswith(key + "="))
def ratio(suffix):
    return figure("sslab" + suffix, "sslab_images_per_sec") / figure("pytorch" + suffix, "pytorch_images_per_sec")
# The bench checked the GPU's convolution and kernels against the CPU ops
# before timing: the convolutions (alone and with their BatchNorm) in TF32
# (PyTorch's and cuDNN's default for f32 convolutions), the kernels in f32,
# and bf16 rounds.
import re
checks = []
try:
    for line in open(f"{sys.argv[1]}/sslab.out"):
        m = re.match(r"(\w+)_(f32|bf16)_max_relative_error_vs_cpu=(\S+)", line)
        if m:
            checks.append((m[1], m[2], float(m[3])))
        elif "could not run" in line:
            print(f"FAILED: {line.strip()}")
except OSError:
    pass
if not checks:
    print("GPU checks: not run (no GPU)")
for op, dtype, err in checks:
    limit = 5e-2 if dtype == "bf16" else 1e-2 if op.startswith("conv") else 1e-3
    print(f"{op} check {dtype}: {'ok' if err < limit else 'FAILED'} ({err:.2e}, limit {limit:g})")
for suffix in ["_bf16", ""]:
    try:
        speedup = figure("sslab" + suffix, "sslab_images_per_sec") / figure("before" + suffix, "sslab_images_per_sec")
        print(f"speedup over SSLAB_CUDA_BEFORE{suffix}: {speedup:.3f}")
    except (OSError, StopIteration):
        pass
for suffix in ["_bf16", ""]:
    try:
        print(f"train_step_ratio_vs_pytorch_cuda{suffix}={ratio(suffix):.3f}")
    except (OSError, StopIteration):
        print(f"train_step_ratio_vs_pytorch_cuda{suffix}: missing (a stage above failed)")
EOF
