"""`benchmarks.profile`: the op classifier and the trace summariser on synthetic GPU-like traces
(streams, derived lines, overlapping kernels, idle time, kernels in a command buffer with their
name stacks from the compiled HLO), one real CPU trace end to end, and the one-line error path."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from benchmarks import profile
from shared.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST, GPU0, GPU1 = 1, 2, 3
PYTHON, STREAM, MEMCPY, XLA_OPS = 5, 13, 14, 90


@pytest.mark.parametrize(
  "name, args, expected",
  [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas", {}, "gemm"),
    ("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8", {}, "gemm"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", {}, "gemm"),
    ("gemm_fusion_dot_general_744", {"hlo_op": "gemm_fusion_dot_general.744"}, "gemm"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_wo_smem_bf16bf16_f32_nhwckrsc_nhwc", {}, "gemm"),
    ("void cudnn::cnn::wgrad2d_grouped_direct_kernel<float>", {}, "gemm"),
    ("convolution.3", {"hlo_op": "convolution.3"}, "gemm"),
    ("dot.7", {"hlo_op": "dot.7"}, "gemm"),
    (
      "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64",
      {},
      "attention",
    ),
    ("flash_fwd_kernel", {}, "attention"),
    ("triton_softmax_3", {"hlo_op": "triton_softmax.3"}, "attention"),
    ("loop_convert_fusion", {"hlo_op": "loop_convert_fusion"}, "elementwise"),
    ("input_reduce_fusion_12", {"hlo_op": "input_reduce_fusion.12"}, "elementwise"),
    ("wrapped_add", {"hlo_op": "wrapped_add"}, "elementwise"),
    ("ynn_fusion.91", {"hlo_op": "ynn_fusion.91"}, "elementwise"),
    ("MemcpyD2D", {"memcpy_details": "kind_src:device kind_dst:device size:64"}, "copy"),
    ("loop_transpose_fusion", {}, "copy"),
    ("copy_bitcast_fusion.4", {"hlo_op": "copy_bitcast_fusion.4"}, "copy"),
    (
      "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
      {},
      "collective",
    ),
    ("all-reduce.115", {"hlo_op": "all-reduce.115"}, "collective"),
    ("reduce-scatter.2", {}, "collective"),
    ("while.5", {"hlo_op": "while.5"}, "other"),
  ],
)
def test_classify_by_kernel_and_hlo_op_names(name, args, expected):
  assert profile.classify(name, args) == expected


def test_classify_optimizer_from_the_name_stack():
  outside = {"hlo_op": "fusion.3", "tf_op": "jit(step)/jit(main)/mul"}
  backward = {"hlo_op": "fusion.4", "tf_op": "jit(step)/transpose(jvp(UNet))/ResBlock_0/add"}
  forward = {"hlo_op": "fusion.5", "tf_op": "jit(step)/jvp(UNet)/GroupNorm_0/mul"}
  # In a step that differentiates, elementwise work outside the differentiated loss is the update.
  assert profile.classify("loop_multiply_fusion", outside, grad_step=True) == "optimizer"
  assert profile.classify("loop_add_fusion", backward, grad_step=True) == "elementwise"
  assert profile.classify("loop_multiply_fusion", forward, grad_step=True) == "elementwise"
  # Not in a forward-only step (sampling), nor without any name stack (CPU traces).
  assert profile.classify("loop_multiply_fusion", outside) == "elementwise"
  assert profile.classify("loop_multiply_fusion", {"hlo_op": "fusion"}, grad_step=True) == (
    "elementwise"
  )
  # A GEMM stays a GEMM wherever it is; an explicit scope name is the optimizer in any step.
  assert profile.classify("nvjet_tst_64x8", outside, grad_step=True) == "gemm"
  marked = {"long_name": '%f = f32[8] fusion(), metadata={op_name="jit(step)/optimizer/mul"}'}
  assert profile.classify("loop_multiply_fusion", marked) == "optimizer"


# Optimized HLO as `Compiled.as_text()` prints it (GPU-like: a command buffer computation), and a
# second module printed without '%' whose instruction shares a name with the first's.
HLO_TEXT = """HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

FileNames
1 "/work/main/shared/train_state.py"

%fused_multiply (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %multiply.1 = f32[8]{0} multiply(%param_0, %param_0), metadata={op_name="jit(step)/optimizer/mul"}
}

%command_buffer (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0), metadata={op_name="state.params[\\'w\\']"}
  %loop_add_fusion.2 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(MAE))/add" stack_frame_id=3}
  %input_reduce_fusion.7 = f32[] fusion(%p), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(step)/jvp(MAE)/LayerNorm_0/reduce_sum"}
  %wrapped_convert.62 = bf16[8]{0} fusion(%p), kind=kLoop, calls=%wrapped_convert_computation, metadata={op_name="jit(step)/optimizer/convert_element_type"}
  ROOT %loop_multiply_fusion.4 = f32[8]{0} fusion(%p), kind=kLoop, calls=%fused_multiply, metadata={op_name="jit(step)/optimizer/mul"}
}

ENTRY %main.9 (param.1: f32[8]) -> f32[8] {
  %param.1 = f32[8]{0} parameter(0), sharding={replicated}, metadata={op_name="state.step"}
  ROOT %call = f32[8]{0} call(%param.1), to_apply=%command_buffer
}

HloModule jit_other, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

ENTRY main.3 {
  p.1 = f32[8]{0} parameter(0)
  ROOT loop_multiply_fusion.4 = f32[8]{0} fusion(p.1), kind=kLoop, calls=fc, metadata={op_name="jit(other)/Encoder/mul"}
}
"""  # noqa: E501  (HLO lines as XLA prints them)


def test_hlo_op_names_maps_kernel_names_to_name_stacks():
  names = profile.hlo_op_names(HLO_TEXT)
  assert set(names) == {"jit_step", "jit_other"}
  # Kernel-style keys ('.' as '_', no '%'); fusion bodies, parameters and ops without metadata
  # (the command buffer's call) are left out.
  assert names["jit_step"] == {
    "loop_add_fusion_2": "jit(step)/transpose(jvp(MAE))/add",
    "input_reduce_fusion_7": "jit(step)/jvp(MAE)/LayerNorm_0/reduce_sum",
    "wrapped_convert_62": "jit(step)/optimizer/convert_element_type",
    "loop_multiply_fusion_4": "jit(step)/optimizer/mul",
  }
  assert names["jit_other"] == {"loop_multiply_fusion_4": "jit(other)/Encoder/mul"}
  args = {"hlo_op": "command_buffer_1", "tf_op": "XlaModule:", "hlo_module": "jit_step"}
  assert profile.event_stack("loop_multiply_fusion_4", args, names) == (
    "jit(step)/optimizer/mul",
    "compiled HLO",
  )
  other = {**args, "hlo_module": "jit_other"}
  assert profile.event_stack("loop_multiply_fusion_4", other, names)[0].startswith("jit(other)")
  assert profile.event_stack("sm90_xmma_dgrad_bf16", args, names) == ("", "none")
  # Outside a command buffer the event's own stack wins; its hlo_op is looked up when it has none.
  own = {"hlo_op": "fusion.9", "tf_op": "jit(step)/jvp(MAE)/add"}
  assert profile.event_stack("loop_add_fusion_2", own, names) == (own["tf_op"], "trace args")
  bare = {"hlo_op": "wrapped_convert.62", "hlo_module": "jit_step"}
  assert profile.event_stack("wrapped_convert.62", bare, names)[1] == "compiled HLO"


def command_buffer_trace(n_steps=2, period=100.0):
  """One GPU whose kernels all ran in a CUDA graph (args name the buffer, not the kernel): per
  step a cuDNN dgrad [10, 40], the backward add [40, 50], a forward reduce [50, 60], the update's
  multiply [60, 75] and convert [75, 80], and a memcpy [80, 85]."""
  events = [
    _meta(HOST, "/host:CPU"),
    _meta(HOST, "python", PYTHON),
    _meta(GPU0, "/device:GPU:0"),
    _meta(GPU0, "Stream #14(Compute,Memset)", STREAM),
  ]
  buffer = {"hlo_op": "command_buffer_1", "tf_op": "XlaModule:", "hlo_module": "jit_step"}
  kernels = [
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", 10, 30),
    ("loop_add_fusion_2", 40, 10),
    ("input_reduce_fusion_7", 50, 10),
    ("loop_multiply_fusion_4", 60, 15),
    ("wrapped_convert_62", 75, 5),
    ("memcpy32_post", 80, 5),
  ]
  for i in range(n_steps):
    t = i * period
    events.append(_x(HOST, PYTHON, profile.STEP_MARKER, t, period, step_num=str(i)))
    events += [_x(GPU0, STREAM, name, t + ts, dur, **buffer) for name, ts, dur in kernels]
  return events


def test_command_buffer_kernels_take_their_stacks_from_the_compiled_hlo():
  events = command_buffer_trace()
  blind = profile.summarize(events)
  assert blind["name_stacks"] == "none" and blind["differentiated"] is False
  assert blind["classes"]["optimizer"]["ms_per_step"] == 0
  s = profile.summarize(events, hlo_names=profile.hlo_op_names(HLO_TEXT))
  assert s["name_stacks"] == "compiled HLO" and s["differentiated"] is True
  ms = {c: v["ms_per_step"] for c, v in s["classes"].items()}
  expected = {"gemm": 30, "elementwise": 20, "optimizer": 20, "copy": 5, "idle": 25}
  for c in profile.CLASSES:
    assert ms[c] == pytest.approx(expected.get(c, 0) / 1e3, abs=1e-9), c
  by_name = {k["name"]: k["class"] for k in s["top_kernels"]}
  assert by_name["loop_add_fusion_2"] == by_name["input_reduce_fusion_7"] == "elementwise"
  assert by_name["loop_multiply_fusion_4"] == by_name["wrapped_convert_62"] == "optimizer"


def test_from_trace_reads_the_map_beside_the_trace_or_hlo_names(tmp_path, capsys):
  run = tmp_path / "case" / "plugins" / "profile" / "2026_01_01_00_00_00"
  run.mkdir(parents=True)
  with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": command_buffer_trace()}, f)

  def summary(*argv):
    assert profile.main(["benchmarks.profile", "--from_trace", str(run), *argv]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])

  assert summary()["name_stacks"] == "none"
  names = tmp_path / "names.json"
  profile.save_hlo_names(str(names), profile.hlo_op_names(HLO_TEXT))
  row = summary("--hlo_names", str(names))
  assert row["name_stacks"] == "compiled HLO" and row["hlo_names"] == str(names)
  assert row["classes"]["optimizer"]["ms_per_step"] == pytest.approx(0.02)
  os.replace(names, tmp_path / "case" / profile.HLO_NAMES_FILE)  # where `profile` writes it
  assert summary()["classes"] == row["classes"]


def _meta(pid, name, tid=None):
  if tid is None:
    return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
  return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def _x(pid, tid, name, ts, dur, **args):
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}


def gpu_trace(n_steps=2, period=100.0):
  """Two GPUs; per step on GPU 0: gemm [10, 40], backward add [40, 50], attention [50, 70],
  update [70, 80] on the compute stream and a memcpy [30, 50] on another stream, overlapping the
  gemm and the add; the derived XLA Ops line repeats them; GPU 1 and the host have their own."""
  events = [
    _meta(HOST, "/host:CPU"),
    _meta(HOST, "python", PYTHON),
    _meta(GPU0, "/device:GPU:0"),
    _meta(GPU0, "Stream #13(Kernel)", STREAM),
    _meta(GPU0, "Stream #14(MemcpyD2D)", MEMCPY),
    _meta(GPU0, "XLA Ops", XLA_OPS),
    _meta(GPU1, "/device:GPU:1"),
    _meta(GPU1, "Stream #13(Kernel)", STREAM),
  ]
  for i in range(n_steps):
    t = i * period
    events += [
      _x(HOST, PYTHON, profile.STEP_MARKER, t, period, step_num=str(i)),
      _x(HOST, PYTHON, "PjitFunction(step)", t + 1, 5),
      _x(GPU0, STREAM, "sm90_xmma_gemm_bf16bf16_bf16f32", t + 10, 30, hlo_op="cublas-gemm.1"),
      _x(
        GPU0,
        STREAM,
        "loop_add_fusion",
        t + 40,
        10,
        hlo_op="fusion.2",
        tf_op="jit(step)/transpose(jvp(MAE))/add",
      ),
      _x(GPU0, STREAM, "cudnn_generated_fort_native_sdpa_sm90", t + 50, 20, hlo_op="custom-call.3"),
      _x(
        GPU0, STREAM, "loop_multiply_fusion", t + 70, 10, hlo_op="fusion.4", tf_op="jit(step)/mul"
      ),
      _x(GPU0, MEMCPY, "MemcpyD2D", t + 30, 20, hlo_op="copy.5"),
      _x(GPU0, XLA_OPS, "fusion.1", t + 10, 70, hlo_op="fusion.1"),
      _x(GPU1, STREAM, "loop_add_fusion", t + 5, 90, hlo_op="fusion.2"),
    ]
  return events


def test_summarize_gpu_trace_splits_overlaps_and_counts_idle():
  s = profile.summarize(gpu_trace())
  assert s["steps"] == 2 and s["step_ms"] == pytest.approx(0.1)
  assert s["device_source"].startswith("/device:GPU:0") and s["step_window"] == "step markers"
  assert s["differentiated"] is True
  ms = {c: v["ms_per_step"] for c, v in s["classes"].items()}
  # Busy union [10, 80] of each 100 us step; [30, 40] shared by gemm and memcpy, [40, 50] by
  # the add and the memcpy; GPU 1, the host and the derived XLA Ops line are not counted.
  expected = {
    "gemm": 25,
    "copy": 10,
    "elementwise": 5,
    "attention": 20,
    "optimizer": 10,
    "idle": 30,
  }
  for c in profile.CLASSES:
    assert ms[c] == pytest.approx(expected.get(c, 0) / 1e3, abs=1e-9), c
  assert s["busy_ms"] == pytest.approx(0.07)
  shares = [v["share"] for v in s["classes"].values()]
  assert sum(shares) == pytest.approx(1.0, abs=1e-5)
  assert s["classes"]["idle"]["share"] == pytest.approx(0.3)
  top = s["top_kernels"]
  assert top[0]["name"].startswith("sm90_xmma_gemm") and top[0]["class"] == "gemm"
  assert top[0]["calls_per_step"] == 1
  assert sum(k["ms_per_step"] for k in top) == pytest.approx(0.07)


def test_summarize_steps_without_markers_span_the_device_ops():
  events = [e for e in gpu_trace() if e.get("name") != profile.STEP_MARKER]
  with pytest.raises(DataError, match="steps"):
    profile.summarize(events)
  s = profile.summarize(events, steps=2)
  # From the first op (10) to the last (180): 170 us over 2 steps, 140 of them busy.
  assert s["step_ms"] == pytest.approx(0.085)
  assert s["classes"]["idle"]["ms_per_step"] == pytest.approx(0.015)


def test_device_ops_on_another_clock_are_timed_by_themselves():
  events = gpu_trace()
  for e in events:
    if e.get("pid") == GPU0 and e.get("ph") == "X":
      e["ts"] += 1e6
  s = profile.summarize(events)
  assert s["steps"] == 2 and s["step_window"].startswith("device ops")
  assert s["step_ms"] == pytest.approx(0.085)  # [10, 180] over 2 steps, as without markers


def test_attribute_nested_and_partially_overlapping_events():
  # One thread: a while loop [0, 100] with two body ops; a second thread overlapping the first
  # body op; on a third, two ops whose ends overlap by 1 (not nested: the later takes it).
  spans = [
    (0, 100, "a"),
    (10, 40, "a"),
    (50, 60, "a"),
    (20, 30, "b"),
    (200, 211, "c"),
    (210, 220, "c"),
  ]
  owned, union = profile.attribute(spans)
  assert union == pytest.approx(120)
  assert owned == pytest.approx([60, 25, 10, 5, 10, 10])


def test_cpu_thunks_nest_and_take_the_first_device():
  events = [_meta(HOST, "/host:CPU"), _meta(HOST, "tf_XLAPjRtCpuClient", 7)]
  for ordinal in ("0", "1"):
    events += [
      _x(HOST, 7, "while.5", 0, 100, hlo_op="while.5", device_ordinal=ordinal),
      _x(HOST, 7, "ynn_fusion", 10, 30, hlo_op="ynn_fusion", device_ordinal=ordinal),
      _x(HOST, 7, "convolution.2", 50, 20, hlo_op="convolution.2", device_ordinal=ordinal),
      _x(HOST, 7, "end: while.5", 100, 1, device_ordinal=ordinal),
      _x(HOST, 7, "SlinkyThreadPool::Await", 15, 5),
    ]
  ops, source = profile.device_events(events)
  assert len(ops) == 3 and "device_ordinal 0" in source
  s = profile.summarize(events, steps=1)
  ms = {c: v["ms_per_step"] for c, v in s["classes"].items()}
  assert ms["other"] == pytest.approx(0.05) and ms["elementwise"] == pytest.approx(0.03)
  assert ms["gemm"] == pytest.approx(0.02) and ms["idle"] == 0  # no markers: the ops span


def test_find_trace_picks_the_newest_run_and_reads_it(tmp_path):
  for case, run, n in (("b", "2026_01_01_00_00_00", 1), ("a", "2026_01_02_00_00_00", 2)):
    folder = tmp_path / case / "plugins" / "profile" / run
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
      json.dump({"traceEvents": gpu_trace(n_steps=n)}, f)
    with gzip.open(folder / "host.trace.json.gz", "wt") as f:
      json.dump({"traceEvents": []}, f)
  path = profile.find_trace(str(tmp_path))
  assert path.endswith("2026_01_02_00_00_00/perfetto_trace.json.gz")
  assert profile.summarize(profile.read_events(path))["steps"] == 2
  with pytest.raises(DataError, match="no such"):
    profile.find_trace(str(tmp_path / "missing"))
  (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
  with pytest.raises(DataError, match="bad.json.gz"):
    profile.read_events(str(tmp_path / "bad.json.gz"))


def test_profile_a_tiny_step_on_the_cpu_end_to_end(tmp_path):
  out, traces = tmp_path / "profile.jsonl", tmp_path / "traces"
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.profile", "--config", "configs/unlearnable.py:tiny"]
    + ["--what", "train_step", "--batch", "8", "--steps", "2", "--warmup", "1"]
    + ["--trace_dir", str(traces), "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row["case"] == "unlearnable/victim_train_step" and row["batch_size"] == 8
  assert row["steps"] == 2 and row["step_ms"] > 0 and row["device_kind"]
  assert set(row["classes"]) == set(profile.CLASSES)
  assert sum(v["share"] for v in row["classes"].values()) == pytest.approx(1.0, abs=1e-3)
  assert sum(v["ms_per_step"] for v in row["classes"].values()) == pytest.approx(
    row["step_ms"], rel=1e-3
  )
  assert 0 < len(row["top_kernels"]) <= profile.TOP_KERNELS
  assert os.path.isfile(row["trace"]) and row["trace"].startswith(str(traces))
  assert "| unlearnable/victim_train_step | 8 |" in proc.stdout
  # The CPU thunks carry no name stacks: they come from the step's compiled HLO, saved beside
  # the trace, and the update under `jax.named_scope("optimizer")` is classed as such.
  assert row["name_stacks"] == "compiled HLO" and row["differentiated"] is True
  assert row["hlo_names"] == str(traces / "unlearnable_victim_train_step" / "hlo_op_names.json")
  assert 0 <= row["hlo_names_s"] < 5
  names = profile.load_hlo_names(row["hlo_names"])
  assert set(names) == {"jit_step"} and len(names["jit_step"]) > 10
  assert any("/optimizer/" in stack for stack in names["jit_step"].values())
  assert row["classes"]["optimizer"]["ms_per_step"] > 0
  # The written trace can be summarised again on its own.
  again = subprocess.run(
    [sys.executable, "-m", "benchmarks.profile", "--from_trace", os.path.dirname(row["trace"])],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert again.returncode == 0, again.stderr
  reread = json.loads(again.stdout.splitlines()[0])
  assert reread["classes"] == row["classes"] and reread["hlo_names"] == row["hlo_names"]


def test_unknown_what_is_one_line_exit_2():
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.profile", "--config", "configs/unlearnable.py:tiny"]
    + ["--what", "x", "--trace_dir", "/tmp/unused_ibprune_traces"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "'x'" in lines[-1], proc.stderr


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--what", "train_step", "--trace_dir", "{tmp}/t"], "--config is required"),
    (["--config", "configs/unlearnable.py:tiny"], "--trace_dir is required"),
    (["--config", "configs/unlearnable.py:tiny", "--trace_dir", "{tmp}/file/t"], "--trace_dir"),
    (["--from_trace", "{tmp}/missing"], "no such file"),
    (["--from_trace", "{tmp}"], "no perfetto_trace.json.gz"),
  ],
)
# ml_collections loads a config file with importlib's deprecated load_module (its code, not ours).
@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, argv, message):
  from shared import cli

  (tmp_path / "file").write_text("")
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  with pytest.raises(SystemExit) as exit_info:
    cli.guarded(profile.main, ["benchmarks.profile", *argv])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
