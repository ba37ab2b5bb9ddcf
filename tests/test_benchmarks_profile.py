"""benchmarks/profile_step.py: the profile attributes device time to the right parts.

The attribution rests on the name scopes of mpt_jax.ops / train.train_step reaching XLA's
op_name metadata; these tests fail if a scope is dropped or the HLO / trace parsing breaks.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import profile_step  # noqa: E402
import train_step  # noqa: E402

# A hand-written module in XLA's text format: a fusion whose own line has no metadata (its
# fused computation has), a custom-call GEMM, a while loop calling a body, and a plain op.
HLO = """HloModule jit_train_step, is_scheduled=true

%fused_computation.3 (param_0: f32[8], param_1: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %param_1 = f32[8]{0} parameter(1)
  %sign.1 = f32[8]{0} sign(%param_0), metadata={op_name="jit(train_step)/transpose(jvp(Net))/c1/score_grad/sign"}
  ROOT %multiply.2 = f32[8]{0} multiply(%sign.1, %param_1), metadata={op_name="jit(train_step)/transpose(jvp(Net))/c1/score_grad/mul"}
}

%body.7 (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  ROOT %scatter.9 = (s32[], f32[8]{0}) custom-call(%p), custom_call_target="foo", metadata={op_name="jit(train_step)/mask_search/scatter-add"}
}

%cond.8 (p.1: (s32[], f32[8])) -> pred[] {
  %p.1 = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main.10 (a: f32[8], b: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %b = f32[8]{0} parameter(1)
  %loop_multiply_fusion = f32[8]{0} fusion(%a, %b), kind=kLoop, calls=%fused_computation.3
  %while.4 = (s32[], f32[8]{0}) while(%t), condition=%cond.8, body=%body.7
  %gemm.5 = f32[8]{0} custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", backend_config={}
  %rw.11 = f32[8]{0} reduce-window(%a, %b), metadata={op_name="reduce_window_sum"}
  %max.12 = f32[8]{0} maximum(%a, %b), metadata={op_name="jit(train_step)/jvp(Net)/relu/max"}
  ROOT %add.6 = f32[8]{0} add(%a, %b), metadata={op_name="jit(train_step)/optimizer/add"}
}
"""


def test_parse_hlo_follows_fusions_loops_and_custom_calls():
    hlo = profile_step.parse_hlo(HLO)
    fusion = hlo["loop_multiply_fusion"]
    assert fusion["opcode"] == "fusion"
    assert any("score_grad" in n for n in fusion["op_names"])  # from the fused computation
    assert profile_step.categorize(fusion["op_names"], fusion["opcodes"]) == "score grad"
    loop = hlo["while.4"]
    assert profile_step.categorize(loop["op_names"], loop["opcodes"]) == "mask search"
    gemm = hlo["gemm.5"]
    assert gemm["opcode"] == "custom-call:__cublas$lt$matmul" and not gemm["op_names"]
    assert profile_step.categorize(gemm["op_names"], gemm["opcodes"]) == "conv/matmul"
    assert profile_step.categorize(hlo["add.6"]["op_names"], hlo["add.6"]["opcodes"]) == \
        "optimizer"
    # no name stack (an op XLA made, e.g. a cumsum's expansion) vs the model's own ops
    assert profile_step.categorize(hlo["rw.11"]["op_names"], hlo["rw.11"]["opcodes"]) == \
        "unattributed"
    assert profile_step.categorize(hlo["max.12"]["op_names"], hlo["max.12"]["opcodes"]) == \
        "other"


def test_device_time_prefers_gpu_stream_events_and_ignores_host_events():
    hlo = profile_step.parse_hlo(HLO)
    meta = [dict(ph="M", name="process_name", pid=1, args=dict(name="/device:GPU:0")),
            dict(ph="M", name="thread_name", pid=1, tid=10, args=dict(name="Stream #14(Compute)")),
            dict(ph="M", name="thread_name", pid=1, tid=11, args=dict(name="XLA Ops")),
            dict(ph="M", name="process_name", pid=2, args=dict(name="/host:CPU"))]
    kernels = [dict(ph="X", pid=1, tid=10, name="loop_multiply_fusion_kernel", dur=3.0,
                    args=dict(hlo_op="loop_multiply_fusion")),
               dict(ph="X", pid=1, tid=10, name="sm90_gemm", dur=5.0, args=dict(hlo_op="gemm.5")),
               dict(ph="X", pid=1, tid=10, name="sm90_gemm", dur=7.0, args=dict(hlo_op="gemm.5")),
               # the summary line repeats the ops: must not be counted twice
               dict(ph="X", pid=1, tid=11, name="gemm.5", dur=12.0),
               # host-side events (Python, runtime) name no instruction
               dict(ph="X", pid=2, tid=1, name="PjitFunction(train_step)", dur=100.0),
               dict(ph="X", pid=2, tid=1, name="add.6", dur=50.0)]
    times = profile_step.device_time(meta + kernels, hlo)
    assert times == {"loop_multiply_fusion": [3.0, 1], "gemm.5": [12.0, 2]}
    summary = profile_step.summarize(times, hlo, steps=2)
    by_cat = {r["category"]: r for r in summary["categories"]}
    assert by_cat["conv/matmul"]["ms_per_step"] == pytest.approx(6.0e-3)
    assert by_cat["score grad"]["kernels_per_step"] == pytest.approx(0.5)
    assert summary["device_ms_per_step"] == pytest.approx(7.5e-3)
    assert sum(r["share"] for r in summary["categories"]) == pytest.approx(1.0)


@pytest.mark.end_to_end  # benchmarks/profile_step.py, whole
@pytest.mark.parametrize("mode", ["biprop", "dense"])
def test_profile_of_the_real_step_on_cpu(mode):
    """A traced CPU step of Conv-2: biprop spends time in the mask search, the kernel build
    and the score gradient; the dense baseline has none of the three."""
    config = train_step.load_config("conv2", mode, 4, "float32", 0.2, "per_layer", "compare")
    summary = profile_step.profile(config, steps=2, warmup=1)
    by_cat = {r["category"]: r for r in summary["categories"]}
    biprop_parts = ("mask search", "kernel build", "score grad")
    assert by_cat["conv/matmul"]["ms_per_step"] > 0
    assert by_cat["optimizer"]["kernels_per_step"] > 0
    if mode == "biprop":
        for part in biprop_parts:
            assert by_cat[part]["kernels_per_step"] > 0, part
    else:
        for part in biprop_parts:
            assert by_cat[part]["kernels_per_step"] == 0, part
    report = profile_step.format_report(summary, summary["wall_ms_per_step"], "t")
    assert "| mask search |" in report and "Top 15 instructions" in report


def test_rows_under_other_settings_pair_with_their_own_dense_row(monkeypatch):
    """train_step.py tags rows with $XLA_FLAGS / $MPT_JAX_* (env_tag) and add_ratios divides
    a biprop row only by the dense row measured under the same settings (knobs of the mask
    search aside, which a dense step does not run)."""
    for key in [k for k in os.environ if k.startswith("MPT_JAX_")] + ["XLA_FLAGS"]:
        monkeypatch.delenv(key, raising=False)
    assert train_step.env_tag() == ""
    monkeypatch.setenv("MPT_JAX_SELECT_COPIES", " 256 ")
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=")
    assert train_step.env_tag() == ("XLA_FLAGS=--xla_gpu_enable_command_buffer= "
                                    "MPT_JAX_SELECT_COPIES=256")
    base = dict(model="conv4", batch=256, precision="bfloat16")
    rows = [dict(base, mode="dense", images_per_s=200.0, ms_per_step=5.0),
            dict(base, mode="dense", images_per_s=100.0, ms_per_step=10.0, env="X=1"),
            dict(base, mode="biprop", images_per_s=150.0, ms_per_step=20.0 / 3),
            dict(base, mode="biprop", images_per_s=80.0, ms_per_step=12.5, env="X=1"),
            dict(base, mode="biprop", images_per_s=50.0, ms_per_step=20.0, env="Y=2")]
    train_step.add_ratios(rows)
    assert rows[2]["vs_dense"] == 0.75 and rows[2]["mask_pct"] == 25.0
    assert rows[3]["vs_dense"] == 0.8 and rows[3]["mask_pct"] == 20.0
    assert "vs_dense" not in rows[4]  # no dense row under Y=2
    # Mask-only knobs do not change a dense step: such rows pair with the dense row of the
    # other settings (here: none, then X=1); XLA_FLAGS and other knobs still separate rows.
    tagged = [dict(base, mode="biprop", images_per_s=160.0, ms_per_step=6.25,
                   env="MPT_JAX_SELECT_COPIES=256 MPT_JAX_SELECT_DIGITS=16,15"),
              dict(base, mode="biprop", images_per_s=90.0, ms_per_step=100 / 9,
                   env="X=1 MPT_JAX_MASK_BITS=6"),
              dict(base, mode="biprop", images_per_s=90.0, ms_per_step=100 / 9,
                   env="XLA_FLAGS=--a --b MPT_JAX_SELECT_COPIES=8")]
    train_step.add_ratios(rows[:2] + tagged)
    assert tagged[0]["vs_dense"] == 0.8 and tagged[1]["vs_dense"] == 0.9
    assert "vs_dense" not in tagged[2]
    assert train_step.dense_env("XLA_FLAGS=--a --b MPT_JAX_SELECT_COPIES=8") == "XLA_FLAGS=--a --b"
