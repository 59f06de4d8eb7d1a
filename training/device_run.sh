#!/usr/bin/env bash
# The default model's GPU recipe in one command, for a lent GPU machine (many cores, one large GPU, no internet):
# install from the repository, synthesise the data with every core, train both stages with AMP (or, with
# --from-default, fine-tune the shipped model's stage 2) under a time limit, evaluate on the real-CT benchmark,
# export the model, and leave model, figures and log under $OUT.
#
#   bash training/device_run.sh [--minutes 9] [--data DIR] [--cases N] [--out DIR] [--smoke | --from-default]
#
# --minutes  wall-clock limit for the whole run: training gets what is left after the data, less a 3-minute
#            reserve for prediction, export and the benchmark, and stops by itself at an epoch boundary; each
#            stage's number of epochs is fitted to that time after its first two epochs, so that its learning-rate
#            schedule ends with it (train --fit-epochs, decision 115); the last steps are not cut off, so a slow
#            machine can overrun the limit (the CPU smoke run did)
# --data     folder with kits23/labels, anatomy/ and (optional) ct/, real_ct/, or with *.tar.xz archives of them
#            (unpacked first): default ../shared/data, or .carry/data when the machine has no ../shared
#            (python -m training.device_pack writes its archives)
# --smoke    a CPU check of the whole chain in minutes: 4 small cases, the tiny smoke networks and their few
#            epochs (not fitted to the time, which would fill it)
# --from-default  fine-tune the shipped default model instead of training from random weights (decision 117): its
#            stage 1 is kept, and each network of its stage-2 ensemble continues with stage2_gpu_ft, one per seed,
#            side by side; every training minute goes to stage 2
# A machine without SimpleITK installs it from .carry/wheels/*.tar.xz (also written by device_pack).
set -euo pipefail

minutes=9; data=""; cases=160; smoke=0; from_default=0; out="${OUT:-$PWD/out/device_run}"
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --cases) cases="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --from-default) from_default=1; shift ;;
    *) echo "device_run.sh: unknown option '$1' (see the comment at the top of the script)" >&2; exit 2 ;;
  esac
done
if [ "$smoke" = 1 ] && [ "$from_default" = 1 ]; then
  echo "device_run: --smoke trains the tiny smoke networks, which cannot start from the default model" >&2; exit 2
fi
deadline=$(( $(date +%s) + minutes * 60 ))
left_min() { echo $(( (deadline - $(date +%s)) / 60 )); }
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/kts_device.XXXXXX")
trap 'rm -rf "$work"' EXIT  # what is worth keeping is copied to $out
exec > >(tee -a "$out/log.txt") 2>&1
echo "device_run: $(date -u +%FT%TZ), limit ${minutes} min, work $work"

# -- 1. install -------------------------------------------------------------------------------------------
if ! python3 -c "import SimpleITK" 2>/dev/null; then
  mkdir -p /tmp/site
  for t in .carry/wheels/*.tar.xz; do [ -f "$t" ] && tar xJf "$t" -C /tmp/site; done
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . \
  || export PYTHONPATH="$PWD/KidneyTumorSeg:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'EOF' | tee "$out/machine.txt"
import os, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"{gpu}; {os.cpu_count()} cores; torch {torch.__version__}; python {platform.python_version()}")
EOF
device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")

# -- 2. data ------------------------------------------------------------------------------------------------
if [ -z "$data" ]; then
  if [ -d ../shared/data/anatomy ]; then data=../shared/data; else data=.carry/data; fi
fi
if compgen -G "$data/*.tar.xz" > /dev/null; then  # device_pack's archives: xz on every core
  mkdir -p "$work/src"
  for t in "$data"/*.tar.xz; do tar -I "xz -T0" -xf "$t" -C "$work/src"; done
  data="$work/src"
  echo "data: unpacked $(ls "$data"/kits23/labels | wc -l) KiTS23 maps, $(( $(left_min) )) min left"
fi
# FLARE22 maps 0043-0050 are the held-out synthetic test set's (Resources/Models/README.md): never trained on.
maps=("$data"/anatomy/totalseg "$data"/anatomy/amos)
for f in "$data"/anatomy/flare22/FLARE22_Tr_00*.nii.gz; do
  n=$(basename "$f" .nii.gz); n=${n#FLARE22_Tr_}; [ "$((10#$n))" -le 42 ] && maps+=("$f")
done
if [ "$smoke" = 1 ]; then cases=4; spacing=(--spacing 3 4); else spacing=(); fi
# The six painter options of stage2_v2_mo's cases (the five of decisions 67-68 and --organ-contact, decision 99),
# for both stages here.
painter=(--bowel-walls --bowel-by-kidneys --extrarenal-pelvis --large-organs --collapsed-loops --organ-contact)
python3 -m training.synthetic --kits23 "$data/kits23/labels" --anatomy "${maps[@]}" -o "$work/data" \
  -n "$cases" --seed 2026 --workers "$(nproc)" "${spacing[@]}" "${painter[@]}" \
  --exclude benchmarks/held_out_kits23.json > "$work/synthetic.log"  # the held-out test set's KiTS23 cases
cp "$work/data/synthetic.json" "$out/" 2>/dev/null || true  # which cases trained: checked against held-out sets
echo "data: $(ls -d "$work"/data/case_* | wc -l) cases, $(( $(left_min) )) min left"

# -- 3. train, predict the validation fold, evaluate, export --------------------------------------------------
name=kits23-anatomy-gpu
# Both stages side by side (--jobs 2; with --from-default the two stage-2 networks): the GPU holds both small
# networks, 16 cores feed both loaders, and each run gets the whole training time instead of half of it.
if [ "$smoke" = 1 ]; then recipe=(--quick); folds=2
elif [ "$from_default" = 1 ]; then  # the files are checked against their SHA-256 on the way
  files=$(python3 -c "from KidneyTumorSegLib.models import resolve_model as r; m = r('default')
print(m.stage1); print(m.stage2)") || { echo "device_run: --from-default: the default model could not be found or" \
    "verified (see above); run without --from-default to train from random weights" >&2; exit 3; }
  s1=$(sed -n 1p <<< "$files"); s2=$(sed -n 2p <<< "$files")
  recipe=(--stage1-from "$s1" --stage2-config stage2_gpu_ft --stage2-init "$s2" --stage2-seeds 0 1 --jobs 2
          --fit-epochs); folds=8; name=kits23-anatomy-gpu-ft
else recipe=(--stage1-config stage1_gpu --stage2-config stage2_gpu --jobs 2 --fit-epochs); folds=8; fi
train_min=$(( $(left_min) - 3 ))  # 3 minutes stay for prediction, export and the benchmark
[ "$train_min" -ge 1 ] || { echo "device_run: no time left to train (limit ${minutes} min)"; exit 3; }
python3 -m training.reproduce --data "$work/data" --work "$work" "${recipe[@]}" --folds "$folds" --fold 0 \
  --device "$device" --name "$name" --train-minutes "$train_min"
release="$work/release/$name"

# -- 4. figures -----------------------------------------------------------------------------------------------
cp "$work/eval/summary.md" "$out/validation_summary.md" 2>/dev/null || true
tar czf "$out/$name.tar.gz" -C "$work/release" "$name"  # kept before the benchmark, should that overrun
python3 benchmarks/real_ct.py --model "$release" --device "$device" --data "$data" -o "$work/real_ct" \
  || echo "device_run: the real-CT benchmark failed (see above); the model is kept"
cp "$work"/real_ct/real_ct.md "$work"/real_ct/real_ct.json "$out"/ 2>/dev/null || true
# Where a step's time goes: the loader's cut and the batch augmentation (decision 111); half a minute, if left.
if [ "$smoke" = 0 ] && [ "$(left_min)" -ge 1 ]; then
  python3 benchmarks/loader.py --config stage2_gpu --cache "$work/cache/stage2" --patches 16 --device "$device" \
    > "$out/loader.md" 2>&1 || echo "device_run: the loader benchmark failed (see loader.md)"
fi
echo "device_run: done in $(( minutes - $(left_min) )) min; $out holds $(ls "$out" | tr '\n' ' ')"
