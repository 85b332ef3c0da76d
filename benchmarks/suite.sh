#!/usr/bin/env bash
# The benchmark groups of docs/benchmarks.md, at paper shapes, one after another:
#   benchmarks/suite.sh OUTDIR GROUP...
# groups: matmul mcae mcae_cudnn mcae_xla mcae_breakdown ddpm_train ddpm_breakdown ddpm_sample unlearnable
# infotok, and mcae_x2
# ddpm_train_x2 (global batch doubled, for 2 devices).
# xla_flags: the DDPM and ResNet-18 train steps under the XLA settings of XLA_FLAG_SETS.
# profile: kernel-class profiles of the paper steps (benchmarks.profile) -> $out/profile.jsonl,
# raw traces in $out/traces/ (PROFILE_STEPS traced calls, default 5).
# peers: the PyTorch peers (benchmarks.peers.*), eager and torch.compile -> $out/peers.jsonl;
# then `python -m benchmarks.ratio $out/bench.jsonl $out/peers.jsonl`.
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
prof() {
  python -m benchmarks.profile --steps "${PROFILE_STEPS:-5}" --warmup "${WARMUP:-3}" \
    --trace_dir "$out/traces" --out "$out/profile.jsonl" "$@"
}
profile_all() {  # every profile, even after one fails; fails if any did
  local rc=0
  prof --config configs/mcae.py:paper --what train_step || rc=1
  prof --config configs/gradflow_prune.py:paper --what train_step || rc=1
  prof --config configs/gradflow_prune.py:paper --what sample --only forward_ || rc=1
  # One DDIM sampler call is 100 U-Net forwards: two traced calls are enough.
  prof --config configs/gradflow_prune.py:paper --what sample --only ddim100_teacher \
    --steps 2 || rc=1
  prof --config configs/unlearnable.py:paper --what perturb || rc=1
  prof --config configs/unlearnable.py:paper --what train_step || rc=1
  prof --config configs/infotok.py:paper --what train_step --batch 32 || rc=1
  return $rc
}
# XLA settings the profiles point at (docs/benchmarks.md: the DDPM and ResNet-18 steps spend a
# quarter to a third of their wall time with no kernel running): the same steps under each,
# named <case>[<label>].
XLA_FLAG_SETS=(
  "cb_off:--xla_gpu_enable_command_buffer="
  "cb_cudnn:--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
  "graph1:--xla_gpu_graph_min_graph_size=1"
)
xla_flags_all() {  # fails if any setting did
  local rc=0 entry
  for entry in "${XLA_FLAG_SETS[@]}"; do
    XLA_FLAGS="${XLA_FLAGS:-} ${entry#*:}" run --config configs/gradflow_prune.py:paper \
      --what train_step --label "${entry%%:*}" || rc=1
    XLA_FLAGS="${XLA_FLAGS:-} ${entry#*:}" run --config configs/unlearnable.py:paper \
      --what train_step --label "${entry%%:*}" || rc=1
  done
  return $rc
}
peers_all() {  # each peer eager, then compiled; fails if any did
  local rc=0 peer
  for peer in mae_vit_b16 ddpm_unet resnet18; do
    for mode in "" --compile; do
      python -m benchmarks.peers.$peer --steps "${STEPS:-10}" --warmup "${WARMUP:-3}" $mode \
        --out "$out/peers.jsonl" || rc=1
    done
  done
  return $rc
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
    xla_flags) xla_flags_all ;;
    profile) profile_all ;;
    peers) peers_all ;;
    *) echo "unknown group $group" ;;
  esac > "$out/$group.log" 2>&1 || echo "group $group failed (see $out/$group.log)"
  tail -n 12 "$out/$group.log" | grep '^|' || true
done
