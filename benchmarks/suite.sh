#!/usr/bin/env bash
# The benchmark groups of docs/benchmarks.md, at paper shapes, one after another:
#   benchmarks/suite.sh OUTDIR GROUP...
# groups: matmul mcae mcae_cudnn mcae_xla mcae_breakdown ddpm_train ddpm_breakdown ddpm_sample unlearnable
# infotok, and mcae_x2
# ddpm_train_x2 (global batch doubled, for 2 devices).
# FLOPs come from benchmarks/flops_paper.jsonl (counted on the CPU; how: docs/benchmarks.md).
# A failing group is logged and the others still run.
set -u
out=$1
shift
mkdir -p "$out"
run() {
  python -m benchmarks.run --noflops --flops_from benchmarks/flops_paper.jsonl \
    --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" --out "$out/bench.jsonl" "$@"
}
for group in "$@"; do
  echo "== $group $(date +%T)"
  case $group in
    matmul) python -m benchmarks.run --matmul --out "$out/bench.jsonl" ;;
    mcae) run --config configs/mcae.py:paper --what train_step ;;
    mcae_cudnn)
      run --config configs/mcae.py:paper --what train_step --label cudnn \
        --config.model.attention_impl=cudnn
      ;;
    mcae_xla) run --config configs/mcae.py:paper --what train_step --label xla \
        --config.model.attention_impl=xla ;;
    mcae_x2) run --config configs/mcae.py:paper --what train_step --batch 512 ;;
    ddpm_train) run --config configs/gradflow_prune.py:paper --what train_step ;;
    ddpm_train_x2) run --config configs/gradflow_prune.py:paper --what train_step --batch 256 ;;
    mcae_breakdown) run --config configs/mcae.py:paper --what breakdown ;;
    ddpm_breakdown) run --config configs/gradflow_prune.py:paper --what breakdown ;;
    ddpm_sample) run --config configs/gradflow_prune.py:paper --what sample ;;
    unlearnable)
      run --config configs/unlearnable.py:paper --what perturb
      run --config configs/unlearnable.py:paper --what train_step
      ;;
    infotok) run --config configs/infotok.py:paper --what train_step --batch 32 ;;
    *) echo "unknown group $group" ;;
  esac > "$out/$group.log" 2>&1 || echo "group $group failed (see $out/$group.log)"
  tail -n 12 "$out/$group.log" | grep '^|' || true
done
