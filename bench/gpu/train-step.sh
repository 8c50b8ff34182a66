#!/usr/bin/env bash
# On a GPU machine, from the repository root: the CUDA build of the
# train-step bench next to the same model and step in PyTorch on the same GPU,
# with the GPU's utilisation and memory sampled while each one's timed steps
# run; then a tiny recipe trained end to end with the CUDA `sslab`.
#
# Build here first (`cargo xtask cuda`, or `cargo xtask cuda --cudnn`) and
# bring target/cuda/bin along, or its packed copy target/cuda/carry (xz),
# which this script unpacks. The GPU machine needs the NVIDIA driver,
# python3 with a CUDA build of torch, and the CUDA libraries our binaries
# link (cuBLAS, cuRAND, NVRTC, cudart, and cuDNN for --cudnn builds): they
# are taken from the nvidia-* wheels next to torch.
#
# Then the same pair again in bf16 (our `optimizer.precision = "bf16"`
# against PyTorch's bf16 autocast).
#
# Results go to stdout and, when $OUT is set, to $OUT/gpu-train-step.txt.
# The last line is `train_step_ratio_vs_pytorch_cuda=<ours / theirs>` (f32).
set -euo pipefail

work=$(mktemp -d)
log=${OUT:-$work}/gpu-train-step.txt
exec > >(tee "$log") 2>&1
bin=${SSLAB_CUDA_BIN:-target/cuda/bin}
if [[ ! -x $bin/train_step && -d target/cuda/carry ]]; then
    bin=$work/bin
    mkdir -p "$bin"
    for packed in target/cuda/carry/*.xz; do
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$packed" "$bin/$(basename "$packed" .xz)"
    done
    chmod +x "$bin"/*
fi

libs=$(python3 - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages()
        for p in glob.glob(os.path.join(sp, "nvidia", "*", "lib", "lib*.so*"))}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

# sampled LABEL CMD...: runs CMD while nvidia-smi samples the GPU every 50 ms,
# then prints the mean utilisation and peak memory inside CMD's timed window
# (its `*_timed_window_unix=START,END` line).
sampled() {
    local label=$1
    shift
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 50 >"$work/$label.smi" &
    local smi=$!
    "$@" | tee "$work/$label.out"
    kill "$smi"
    wait "$smi" 2>/dev/null || true
    python3 - "$label" "$work/$label.smi" "$work/$label.out" <<'EOF'
import datetime, sys
label, smi, out = sys.argv[1:]
line = next(l for l in open(out) if "_timed_window_unix=" in l)
start, end = map(float, line.split("=")[1].split(","))
util, mem = [], []
for row in open(smi):
    parts = [p.strip() for p in row.split(",")]
    try:
        t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    except ValueError:
        continue
    if start <= t <= end:
        util.append(float(parts[1]))
        mem.append(float(parts[2]))
if util:
    print(f"{label}_gpu_utilization_pct={sum(util) / len(util):.1f} ({len(util)} samples)")
    print(f"{label}_gpu_memory_peak_mib={max(mem):.0f}")
else:
    print(f"{label}: no GPU samples inside the timed window")
EOF
}

export SSLAB_BENCH_BATCH=${SSLAB_BENCH_BATCH:-256}
export SSLAB_BENCH_STEPS=${SSLAB_BENCH_STEPS:-30}
sampled sslab "$bin/train_step"
if ! grep -q "candle, Cuda" "$work/sslab.out"; then
    echo "the CUDA build found no GPU or driver and ran on the CPU (line above)"
    [[ ${SSLAB_ALLOW_CPU:-0} == 1 ]] || exit 1
fi
SSLAB_BENCH_DEVICE=${SSLAB_BENCH_DEVICE:-cuda} PYTHONUNBUFFERED=1 sampled pytorch python3 bench/reference/train_step.py

SSLAB_BENCH_PRECISION=bf16 sampled sslab_bf16 "$bin/train_step"
SSLAB_BENCH_PRECISION=bf16 SSLAB_BENCH_DEVICE=${SSLAB_BENCH_DEVICE:-cuda} PYTHONUNBUFFERED=1 \
    sampled pytorch_bf16 python3 bench/reference/train_step.py

echo "== a tiny recipe trained on the GPU"
time "$bin/sslab" train --spec recipes/simclr-tiny.toml --out "$work/run" | tail -n 5

python3 - "$work" <<'EOF'
import sys
def figure(label, key):
    path = f"{sys.argv[1]}/{label}.out"
    return next(float(l.split("=")[1]) for l in open(path) if l.startswith(key + "="))
def ratio(suffix):
    return figure("sslab" + suffix, "sslab_images_per_sec") / figure("pytorch" + suffix, "pytorch_images_per_sec")
# The bench checked the GPU's convolution against the CPU's before timing:
# TF32 (PyTorch's and cuDNN's default for f32 convolutions) and bf16 round.
for dtype, limit in [("f32", 1e-2), ("bf16", 5e-2)]:
    try:
        err = figure("sslab", f"conv_{dtype}_max_relative_error_vs_cpu")
    except StopIteration:
        print(f"conv check {dtype}: not run (no GPU)")
        continue
    print(f"conv check {dtype}: {'ok' if err < limit else 'FAILED'} ({err:.2e}, limit {limit:g})")
print(f"train_step_ratio_vs_pytorch_cuda_bf16={ratio('_bf16'):.3f}")
print(f"train_step_ratio_vs_pytorch_cuda={ratio(''):.3f}")
EOF
