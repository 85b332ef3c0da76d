#!/bin/bash
# Session 2026-12-03 call 2: the CIFAR-10 judge (w32 and w64 side by side) and, in the background,
# the #14 'before' default runs (their logs come back in one tarball).
mkdir -p /tmp/ibdata/cifar10 && cp .stage/cifar10/p3/* /tmp/ibdata/cifar10/
cd /tmp/ibdata/cifar10 && for p in *.piece.00; do [ -e "$p" ] && cat "${p%.00}".* > "${p%.piece.00}" && rm "${p%.00}".*; done; cd -
export PYTHONPATH=/tmp/site:$PWD IBPRUNE_DATA=/tmp/ibcache XLA_PYTHON_CLIENT_PREALLOCATE=false
python -m shared.data.prepare cifar10 --from /tmp/ibdata/cifar10 2>&1 | tail -2
ROOT=$PWD
before() {
  local m=$1 w=/tmp/before/$1
  mkdir -p $w; cd $ROOT/.old/before
  ( s=$(date +%s); XLA_FLAGS=--xla_gpu_deterministic_ops=true PYTHONPATH=/tmp/site timeout 500 python -m $m --config configs/$m.py --config.seeds="(0,)" --workdir $w; echo "rc=$? wall=$(( $(date +%s) - s ))s" ) > $w.log 2>&1
  if [ -f $m/report.py ]; then PYTHONPATH=/tmp/site timeout 30 python -m $m.report $w > $w.report.txt 2>&1; fi
  cp $w/table.md $w.table.md 2>/dev/null; cp $w/summary.md $w.summary.md 2>/dev/null; cp $w/results.json $w.results.json 2>/dev/null
}
for m in mcae infotok unlearnable gradflow_prune; do before $m & done
judge() {
  ( s=$(date +%s); timeout 520 python -m shared.judge --out /tmp/judge_$1 --width $1 --epochs $2 --batch_size 256; echo "rc=$? wall=$(( $(date +%s) - s ))s" ) > /tmp/judge_$1.log 2>&1
  cp /tmp/judge_$1/judge.npz $OUT/judge_w$1.npz 2>/dev/null
}
judge 32 60 & judge 64 40 &
wait
nvidia-smi --query-gpu=name --format=csv,noheader > /tmp/device.txt
cd /tmp && tar czf $OUT/logs.tgz device.txt judge_*.log judge_*/result.json judge_*/metrics.jsonl before/*.log before/*.report.txt before/*.table.md before/*.summary.md before/*.results.json 2>/dev/null
tail -n 2 /tmp/judge_*.log; tail -n 1 /tmp/before/*.log
