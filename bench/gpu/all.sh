#!/usr/bin/env bash
# Every GPU figure the open work needs, in one call on a lent GPU machine
# (a few minutes of it in all), from the repository root after
# `cargo xtask cuda --cudnn` here (bring target/cuda/carry along):
#
#   train-step  bench/gpu/train-step.sh without its recipes: the ResNet-18
#               step against PyTorch, f32 and bf16, with the GPU's busy
#               fraction and peak memory, and the GPU-against-CPU op checks;
#   vit-step    the four ViT cases (MAE and DINO, ViT-Tiny 32 px and
#               ViT-Small 96 px) against PyTorch eager, f32 and bf16, each
#               side's busy fraction and peak memory;
#   rcdm        recipes/simclr-tiny.toml trained, then an RCDM decoder at
#               32 px on its representation (recipes/rcdm-gpu.toml, or
#               SSLAB_GPU_RCDM_SPEC): the sample grids and decoder.json;
#   studies     the -gpu studies named in SSLAB_GPU_STUDIES (default:
#               negatives-noise-gpu guillotine-gpu), their report.md and
#               report.json.
#
# SSLAB_GPU_STAGES picks and orders stages (default: all four, in this
# order). Each stage has a time limit (train-step 330 s, vit-step 300 s,
# rcdm 300 s, each study 150 s); a stage whose limit no longer fits in
# SSLAB_GPU_BUDGET seconds (default 560, under the per-call limit) is
# skipped and says so, and a failed stage does not stop the next. All four
# do not fit one call: run `train-step vit-step` first, then `rcdm studies`
# in a second call if the machine's time allows. Results go
# to stdout and $OUT (the grids, reports and logs). The last lines are the
# ratios: `train_step_ratio_vs_pytorch_cuda[_bf16]=` and
# `vit_step_ratio_vs_pytorch_cuda[_bf16]=`.
set -uo pipefail

here=$(dirname "$0")
work=$(mktemp -d)
out=${OUT:-$work}
exec > >(tee "$out/gpu-all.txt") 2>&1
source "$here/lib.sh"
export PYTHONUNBUFFERED=1
budget=${SSLAB_GPU_BUDGET:-560}
device=${SSLAB_BENCH_DEVICE:-cuda}

# fits STAGE SECONDS: whether STAGE's limit still fits the budget.
fits() {
    local left=$((budget - SECONDS))
    if ((left < $2)); then
        echo "== $1: skipped ($left s of the budget left, it may take $2 s)"
        return 1
    fi
}

stage_train_step() {
    fits train-step 330 || return
    SSLAB_GPU_RECIPES=0 OUT=$out timeout 330 bash "$here/train-step.sh" | tee "$work/train-step.txt"
}

stage_vit_step() {
    fits vit-step 300 || return
    for precision in f32 bf16; do
        local suffix=${precision/f32/}
        suffix=${suffix:+_$suffix}
        SSLAB_BENCH_PRECISION=$precision sampled "vit_sslab$suffix" 90 "$bin/vit_step"
        SSLAB_BENCH_PRECISION=$precision SSLAB_BENCH_DEVICE=$device \
            sampled "vit_pytorch$suffix" 60 python3 bench/reference/vit_step.py
    done
}

stage_rcdm() {
    fits rcdm 300 || return
    echo "== rcdm"
    local started=$SECONDS
    timeout 60 "$bin/sslab" train --spec recipes/simclr-tiny.toml --out "$work/tiny" \
        >"$work/tiny.log" 2>&1 || { echo "rcdm: the run failed:"; tail -n 5 "$work/tiny.log"; return; }
    echo "rcdm: simclr-tiny trained in $((SECONDS - started)) s"
    timeout 240 "$bin/sslab" decode --run "$work/tiny" --spec "${SSLAB_GPU_RCDM_SPEC:-recipes/rcdm-gpu.toml}" \
        --out "$out/rcdm" 2>&1 | tail -n 8
    echo "rcdm: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s (124: over its limit)"
}

stage_studies() {
    for study in ${SSLAB_GPU_STUDIES:-negatives-noise-gpu guillotine-gpu}; do
        fits "$study" 150 || continue
        echo "== $study"
        local started=$SECONDS
        timeout 150 "$bin/sslab" study --spec "recipes/studies/$study.toml" \
            --out "$out/$study" >"$work/$study.log" 2>&1
        local rc=$?
        tail -n 15 "$work/$study.log"
        echo "$study: exit $rc after $((SECONDS - started)) s (124: over its limit)"
    done
}

for stage in ${SSLAB_GPU_STAGES:-train-step vit-step rcdm studies}; do
    "stage_${stage//-/_}"
done

python3 - "$work" <<'PY'
import math, os, sys
work = sys.argv[1]
def figures(label):
    try:
        return dict(l.strip().split("=", 1) for l in open(f"{work}/{label}.out") if "_images_per_sec=" in l)
    except OSError:
        return {}
for suffix in ["_bf16", ""]:
    ours, theirs = figures("vit_sslab" + suffix), figures("vit_pytorch" + suffix)
    ratios = []
    for key, value in ours.items():
        case = key[len("sslab_"):-len("_images_per_sec")]
        other = theirs.get(f"pytorch_{case}_images_per_sec")
        if other:
            ratios.append(float(value) / float(other))
            print(f"vit-step{suffix} {case}: {float(value):.1f} vs {float(other):.1f} images/s, ratio {ratios[-1]:.3f}")
    if len(ratios) == 4:
        mean = math.exp(sum(map(math.log, ratios)) / 4)
        print(f"vit_step_ratio_vs_pytorch_cuda{suffix}={mean:.3f}")
    else:
        print(f"vit_step_ratio_vs_pytorch_cuda{suffix}: missing ({len(ratios)} of 4 cases)")
path = f"{work}/train-step.txt"
if os.path.exists(path):
    for line in open(path):
        if line.startswith("train_step_ratio_vs_pytorch_cuda") or " check " in line:
            print(line.rstrip())
PY
