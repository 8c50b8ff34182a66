# Helpers of the GPU scripts (sourced): the binaries, the CUDA libraries
# they link, and `sampled`. Expects `work` (a scratch folder) to be set.

# unpack FROM TO: the xz-packed binaries in FROM, unpacked into TO.
unpack() {
    mkdir -p "$2"
    for packed in "$1"/*.xz; do
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$packed" "$2/$(basename "$packed" .xz)"
    done
    chmod +x "$2"/*
}
# The CUDA binaries: $SSLAB_CUDA_BIN, target/cuda/bin, or unpacked from
# target/cuda/carry.
bin=${SSLAB_CUDA_BIN:-target/cuda/bin}
if [[ ! -x $bin/train_step && -d target/cuda/carry ]]; then
    bin=$work/bin
    unpack target/cuda/carry "$bin"
fi
before=
if [[ -n ${SSLAB_CUDA_BEFORE:-} ]]; then
    before=$work/before
    unpack "$SSLAB_CUDA_BEFORE" "$before"
fi

libs=$(python3 - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages()
        for p in glob.glob(os.path.join(sp, "nvidia", "*", "lib", "lib*.so*"))}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for exe in "$bin"/* ${before:+"$before"/*}; do
    missing=$(ldd "$exe" | grep "not found" || true)
    [[ -z $missing ]] || echo "$(basename "$exe") lacks libraries: $missing"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'

# sampled LABEL SECONDS CMD...: runs CMD (for at most SECONDS) while
# nvidia-smi samples the GPU every 50 ms, then prints the mean utilisation
# and peak memory inside CMD's timed window (its
# `*_timed_window_unix=START,END` line).
sampled() {
    local label=$1 limit=$2
    shift 2
    echo "== $label"
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used \
        --format=csv,noheader,nounits -lms 50 >"$work/$label.smi" &
    local smi=$!
    timeout "$limit" "$@" | tee "$work/$label.out"
    local rc=${PIPESTATUS[0]}
    kill "$smi"
    [[ $rc == 0 ]] || echo "$label: failed (exit $rc; 124 is over its $limit s)"
    wait "$smi" 2>/dev/null || true
    python3 - "$label" "$work/$label.smi" "$work/$label.out" <<'EOF'
import datetime, sys
label, smi, out = sys.argv[1:]
line = next((l for l in open(out) if "_timed_window_unix=" in l), None)
if line is None:
    sys.exit(f"{label}: no timed window")
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

