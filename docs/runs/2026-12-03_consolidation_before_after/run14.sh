#!/bin/bash
# #14 before/after: each method's default run (seed 0) from the tree before the consolidation
# (ddde0b3) and after it (2eeabe2), on one GPU, deterministic ops.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS=--xla_gpu_deterministic_ops=true
ROOT=$PWD
run() {  # tree method
  local t=$1 m=$2 w=$OUT/$1/$2
  mkdir -p $w
  cd $ROOT/.old/$t
  ( s=$(date +%s); timeout 540 python -m $m --config configs/$m.py --config.seeds="(0,)" --workdir $w; echo "rc=$? wall=$(( $(date +%s) - s ))s" ) > $w.log 2>&1
  if [ -f $m/report.py ]; then timeout 30 python -m $m.report $w > $w.report.txt 2>&1; fi
  find $w -type d -name checkpoints -prune -exec rm -rf {} + ; find $w -name '*.npz' -size +2M -delete
}
for t in before after; do for m in mcae infotok unlearnable gradflow_prune; do run $t $m & done; done
wait
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/device.txt
