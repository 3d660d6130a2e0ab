#!/usr/bin/env bash
# The GPU checks of the trainers in one run, for a machine with torch and h5py (no luigi, PyAV or
# hdf5plugin needed): bash bench/gpu_check.sh STORE [OUT]
#
# STORE: a portable copy of the demo build with every feature the models read (random VGGish
# weights, GloVe vectors of the demo's words), made where the pipeline runs:
#   python bench/bench_train.py --build-store full
#   avstore --store full export --dataset demo --codec gzip --exclude video/crop --out STORE   # ~30 MiB
# OUT (default: a temporary folder) receives one JSON per step, train-MODEL.log and the runs.
# Steps, each under its own time limit so that one hang does not take the rest:
#   1. bench_train, every model at the published sizes, resident data: samples/s, GPU utilisation,
#      ops and device reads per step (AVEF on the 72 px crops, as the portable copy holds them);
#   2. the streaming loader alone by workers (AVEF), packed beside a plain DataLoader;
#   3. Perception and SincNet+text (launch-bound at their papers' batches) in PROCESSES processes at
#      once, as --folds-parallel runs folds on one GPU: each one's samples/s and the sum;
#   4. one short fold of every model through `python -m models.train` (bf16), end to end.
# Environment: STEPS (30), WORKERS (1,2,4,8,14), THREADS (4), PROCESSES (4), EPOCHS (2), TRAIN (the
# models of step 4: "avef aclstm dlstm perception sincnet_text").
set -uo pipefail
STORE=${1:?usage: bash bench/gpu_check.sh STORE [OUT]}
[ -d "$STORE" ] || { echo "gpu_check: $STORE is not a folder: make the portable store first (see the top of $0)" >&2; exit 2; }
STORE=$(realpath "$STORE")
OUT=$(realpath -m "${2:-$(mktemp -d)}")
cd "$(dirname "$0")/.."
STEPS=${STEPS:-30} WORKERS=${WORKERS:-1,2,4,8,14} THREADS=${THREADS:-4} EPOCHS=${EPOCHS:-2} PROCESSES=${PROCESSES:-4}
TRAIN=${TRAIN:-avef aclstm dlstm perception sincnet_text}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python - <<'PY'
import torch
print("torch", torch.__version__, "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
PY
run() {   # run NAME LIMIT_S COMMAND...: stdout to OUT/NAME.json, stderr to OUT/NAME.err
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
    echo "$name: exit $?"
}
B=(python bench/bench_train.py --store "$STORE" --steps "$STEPS" --threads "$THREADS")
run avef 240 "${B[@]}" --workers 1 --models avef --set avef.small_crops=true
run clip_models 300 "${B[@]}" --workers 1 --models aclstm dlstm perception sincnet_text
run loader 240 "${B[@]}" --workers "$WORKERS" --data stream --models avef --set avef.small_crops=true
run folds_parallel 300 "${B[@]}" --workers 1 --processes "$PROCESSES" --models perception sincnet_text
for m in $TRAIN; do
    extra=(); [ "$m" = avef ] && extra=(--set small_crops=true --net-epochs 2)
    [ "$m" = dlstm ] && extra=(--set task=\"classification\")
    timeout 300 python -m models.train --model "$m" --dataset demo --store "$STORE" --fold 0 \
        --epochs "$EPOCHS" --precision bf16 --out "$OUT/runs" "${extra[@]}" > "$OUT/train-$m.log" 2>&1
    echo "train $m: exit $? ($(tail -1 "$OUT/train-$m.log"))"
done
python - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"{'model':14} {'data':9} {'samples/s':>10} {'loader/s':>10} {'GPU %':>6} {'ops/step':>9}  reads/step")
for name in ("avef", "clip_models", "loader", "folds_parallel"):
    try:
        d = json.load(open(os.path.join(out, name + ".json")))
    except (OSError, ValueError) as err:
        print(name, "no figures:", err)
        continue
    for m, v in d["models"].items():
        if "skipped" in v or "failed" in v:
            print(f"{m:14} {'skipped' if 'skipped' in v else 'failed'}: {v.get('skipped', v.get('failed'))[:100]}")
            continue
        if "processes" in v:
            print(f"{m:14} {v['processes']} processes at once: {v['train_samples_per_s_total']} samples/s in all "
                  f"(each {v['train_samples_per_s_each']}, GPU % {v['gpu_utilisation_percent_each']})")
            continue
        print(f"{m:14} {v['data']:9} {v['train_samples_per_s']:>10} {v['loader_samples_per_s']:>10} "
              f"{str(v['gpu_utilisation_percent']):>6} {v['ops_per_step']:>9}  {v['reads_per_step']}")
        if name == "loader":
            print("  streaming loader by workers: packed", v["stream_loader_samples_per_s_by_workers"],
                  "plain", v["stream_loader_plain_dataloader_by_workers"])
print("figures in", out)
PY
