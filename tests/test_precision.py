"""finetune.precision / eval.precision: how ``auto`` resolves, and which cache keys a precision changes."""

from __future__ import annotations

import pytest

import finetune.precision as precision
from eval.precision import eval_dtype, keyed_precisions
from finetune.precision import cpu_flags, keyed_finetune, padding_free, resolve_precision
from metrics import InputError
from tests.test_cache_keys import _keys

AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


@pytest.mark.parametrize("cpuinfo, expected", [(AMD_AVX2, "fp32"), (SAPPHIRE, "bf16"), (ZEN4, "bf16"), ("", "fp32")])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(cpuinfo, expected):
    has = bool(cpu_flags(cpuinfo) & precision.BF16_CPU_FLAGS)
    assert resolve_precision("auto", has_bf16=has) == expected


def test_explicit_and_absent_precisions_resolve_as_written():
    for has in (True, False):
        assert resolve_precision("fp32", has_bf16=has) == "fp32"
        assert resolve_precision("bf16", has_bf16=has) == "bf16"
        assert resolve_precision(None, has_bf16=has) == "fp32"  # absent: the configured dtype, as before
    with pytest.raises(InputError, match="finetune.precision must be one of auto, bf16, fp32"):
        resolve_precision("float16", where="finetune.precision")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_padding_free_auto_follows_the_precision(monkeypatch, has_bf16):
    monkeypatch.setattr(precision, "this_cpu_has_bf16", lambda: has_bf16)
    cfg = {"precision": "auto", "padding_free": "auto"}
    assert padding_free(cfg) is has_bf16
    assert padding_free(cfg | {"padding_free": True}) and not padding_free(cfg | {"padding_free": False})
    assert not padding_free({})
    with pytest.raises(InputError, match="padding_free"):
        padding_free({"padding_free": "yes"})


def test_float32_keys_as_if_the_settings_did_not_exist(monkeypatch):
    monkeypatch.setattr(precision, "this_cpu_has_bf16", lambda: False)
    legacy = {"finetune": {"max_length": 256, "args": {"seed": 1}}, "eval": {"name": "reference_nll"}}
    fast = {"finetune": legacy["finetune"] | {"precision": "auto", "padding_free": "auto"},
            "eval": legacy["eval"] | {"precision": "auto"}}
    assert keyed_precisions(fast) == keyed_precisions(legacy) == legacy
    monkeypatch.setattr(precision, "this_cpu_has_bf16", lambda: True)
    keyed = keyed_precisions(fast)
    assert keyed["finetune"] == legacy["finetune"] | {"precision": "bf16", "padding_free": True}
    assert keyed["eval"] == legacy["eval"] | {"precision": "bf16"}
    assert keyed_finetune(fast["finetune"] | {"precision": "fp32"}) == legacy["finetune"]
    assert eval_dtype(fast["eval"]) == "bfloat16" and eval_dtype({"precision": "fp32"}, "float16") == "float16"


@pytest.mark.parametrize("base, legacy", [(["debug=tiny"], ["~eval.precision"]),  # reference NLL, standalone
                                          (["debug=tiny", "eval=smoke_judge"], [])])  # the judged suite
def test_bf16_changes_the_model_stages_keys_and_fp32_none(monkeypatch, base, legacy):
    monkeypatch.setattr(precision, "this_cpu_has_bf16", lambda: False)
    before = _keys(base + ["~finetune.precision", "~finetune.padding_free"] + legacy)  # as before the settings
    assert _keys(base) == before  # auto on a CPU without bf16
    assert _keys(base + ["finetune.precision=fp32", "++eval.precision=fp32"]) == before
    bf16 = _keys(base + ["finetune.precision=bf16", "++eval.precision=bf16"])
    assert {k.split("/")[1] for k in before if before[k] != bf16[k]} == {"finetune", "generate", "eval"}
    only_eval = _keys(base + ["++eval.precision=bf16"])
    assert {k.split("/")[1] for k in before if before[k] != only_eval[k]} == {"generate", "eval"}
    monkeypatch.setattr(precision, "this_cpu_has_bf16", lambda: True)
    assert _keys(base + ["++eval.precision=auto"]) == bf16  # auto where the CPU has bf16


def test_checkpointing_switched_off_keys_as_trl_default():
    # TRL checkpoints activations unless told not to; off recomputes nothing and trains the same bits
    # (tests/test_throughput.py), so the CPU preset's `activation_checkpointing: false` keeps the keys it had without it
    assert _keys(["debug=tiny"]) == _keys(["debug=tiny", "~finetune.args.activation_checkpointing"])
