"""One registry shape for every plugin kind (metrics, selectors, evaluators, embed backends, generation backends,
judge kinds, pool formats): duplicates are errors, unknown names get a "did you mean", and every registered entry
rejects bad parameter values with the project's InputError before any work."""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import metrics
import selection
from divcore.errors import InputError
from divcore.params import POSITIVE_INT, integer, one_of
from divcore.registry import Registry, RegistryError, signature_params
from eval.evaluators import EVALUATORS, SUITE, evaluation
from eval.evaluators import register as register_evaluator
from eval.generation import GENERATION_BACKENDS, check_generation_config, make_generator
from eval.generation import register_backend as register_generation_backend
from eval.judges import JUDGE_KINDS, JudgeConfig, make_judge, register_kind
from experiments.data.pools import POOL_FORMATS, check_format_config, check_pool_config, register_format
from experiments.embedding.backends import EMBED_BACKENDS, check_embed_config
from experiments.embedding.backends import register_backend as register_embed_backend
from metrics.registry import METRICS, check_config
from selection.registry import SELECTORS
from tests.helpers import KEY_ENV

REGISTRIES = {"metric": METRICS, "selector": SELECTORS}  # entries called with hyperparameters
ENTRIES = [(kind, e.name, p) for kind, reg in REGISTRIES.items() for e in reg for p in e.params]
# Plugins chosen by a config key, their options read from that config group.
CONFIG_REGISTRIES = {"embed.backend": EMBED_BACKENDS, "eval.generation.backend": GENERATION_BACKENDS,
                     "eval.judge.kind": JUDGE_KINDS, "pool.format": POOL_FORMATS}
EVERY_REGISTRY = REGISTRIES | {"evaluator": EVALUATORS} | CONFIG_REGISTRIES
MISSING = "/nonexistent/divbench"  # a model or data path that any load would fail on with another error


def _bad_values(kind: str, name: str, param: str) -> list:
    # a dict is no parameter's type, so every parameter (declared or annotation-typed) must reject it
    return [*REGISTRIES[kind].get(name).params[param].bad, {"not": "a value"}]


@pytest.mark.parametrize("kind, name, param", ENTRIES, ids=[f"{k}:{n}.{p}" for k, n, p in ENTRIES])
def test_every_entry_rejects_bad_values_before_work(kind, name, param):
    entry = REGISTRIES[kind].get(name)
    default = inspect.signature(entry.fn).parameters[param].default
    assert entry.params[param].test(default), f"{kind} {name}: the default {param}={default!r} breaks its own rule"
    for bad in _bad_values(kind, name, param):
        with pytest.raises(InputError, match=rf"{kind} '{name}' \w*parameter {param} must be"):
            REGISTRIES[kind].check_params(name, {param: bad})


def test_checks_run_before_any_work():
    """A bad value fails in the check, not in the function: the function is never called."""
    calls = []
    reg: Registry = Registry("widget")

    def widget(inputs, n_clusters: int = 3) -> float:
        calls.append(n_clusters)
        return 0.0

    from metrics.registry import Metric
    reg.add("w", Metric("w", widget, frozenset(), "x", signature_params(widget, 1, {"n_clusters": POSITIVE_INT})))
    with pytest.raises(InputError, match="widget 'w' parameter n_clusters must be an integer >= 1, got 0"):
        reg.check_params("w", {"n_clusters": 0})
    assert calls == []


def test_hyperparameter_names_suggest_the_closest():
    with pytest.raises(InputError, match=r"no hyperparameter\(s\) \['neighbours'\] \(did you mean 'neighbors'\?\)"):
        check_config("novelsum", {"neighbours": 5})


def test_constraints_on_missing_parameters_are_a_registration_error():
    def fn(inputs, k: int = 1) -> float:
        return 0.0

    with pytest.raises(RegistryError, match=r"does not take: \['n'\]"):
        signature_params(fn, 1, {"n": integer(lo=1)})


@pytest.mark.parametrize("value, ok", [(5, True), (0, False), (True, False), (2.0, False), ("5", False)])
def test_integer_rule(value, ok):
    assert integer(lo=1).test(value) is ok


def test_one_of_is_exact():
    assert one_of("exact", "gradient").test("exact") and not one_of("exact", "gradient").test("Exact")
    assert not one_of(1, 2).test(True)


def test_valid_values_still_run():
    x = np.random.default_rng(0).normal(size=(30, 4))
    assert metrics.compute([{"name": "knn_distance", "params": {"k": 3}}], metrics.MetricInputs(embeddings=x))


def test_every_registry_is_covered():
    """A registry added anywhere in the five packages must join the common tests below."""
    for package in ("metrics", "selection", "finetune", "eval", "experiments"):
        for mod in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(mod.name)
    found = {id(v): v for name, mod in list(sys.modules.items()) if name.split(".")[0] in
             ("metrics", "selection", "finetune", "eval", "experiments") for v in vars(mod).values()
             if isinstance(v, Registry)}
    assert {r.kind for r in found.values()} == set(EVERY_REGISTRY)
    assert all(any(r is v for v in EVERY_REGISTRY.values()) for r in found.values())


# ---------------------------------------------------------------- unknown names ------------------------------
UNKNOWN: dict[str, Callable[[str], Any]] = {  # each through the public check a config or caller goes through
    "metric": lambda n: check_config(n, {}),
    "selector": selection.get_selector,
    "evaluator": lambda n: evaluation({"name": n}),
    "embed.backend": lambda n: check_embed_config({"backend": n, "model": MISSING}),
    "eval.generation.backend": lambda n: make_generator({"backend": n}, MISSING, None),
    "eval.judge.kind": lambda n: make_judge({"kind": n, "model": MISSING}, MISSING),
    "pool.format": lambda n: check_pool_config({"format": n, "path": MISSING}),
}
NAMES = [(kind, name) for kind, reg in EVERY_REGISTRY.items() for name in reg.names()]


@pytest.mark.parametrize("kind, name", NAMES, ids=[f"{k}:{n}" for k, n in NAMES])
def test_unknown_name_suggests_the_closest(kind, name):
    typo = f"{name}x"
    with pytest.raises(InputError, match=rf"unknown {re.escape(kind)} '{typo}' \(did you mean '{name}'\?\)"):
        UNKNOWN[kind](typo)


# ---------------------------------------------------------------- duplicates ---------------------------------
DUPLICATE: dict[str, Callable[[str], Any]] = {  # each registry's own decorator, as a plugin module would use it
    "metric": lambda n: metrics.register(n, needs=("embeddings",), family="x")(lambda inputs: 0.0),
    "selector": lambda n: selection.register(n)(lambda pool, size, seed: []),
    "evaluator": lambda n: register_evaluator(n, generate=lambda model, cfg, out: None)(lambda gen, cfg, scoring: {}),
    "embed.backend": lambda n: register_embed_backend(n, params={})(lambda model_path, **kw: None),
    "eval.generation.backend": lambda n: register_generation_backend(n, params={})(lambda cfg, model, adapter: None),
    "eval.judge.kind": lambda n: register_kind(n, params={}, default_concurrency=1)(lambda config, cache: None),
    "pool.format": lambda n: register_format(n)(lambda record, where: []),
}


@pytest.mark.parametrize("kind", sorted(EVERY_REGISTRY))
def test_duplicate_name_is_an_error(kind):
    registry = EVERY_REGISTRY[kind]
    for name in registry.names():
        before = registry.get(name)
        with pytest.raises(RegistryError, match=rf"{re.escape(kind)} '{name}' is registered twice"):
            DUPLICATE[kind](name)
        assert registry.get(name) is before  # not replaced


# ---------------------------------------------------------------- bad values of config-chosen plugins --------
def good_config(kind: str, name: str) -> dict[str, Any]:
    """Options every entry of ``kind`` accepts; the model and data paths do not exist, so a check that loaded
    anything would fail on them."""
    vllm = {"dtype": "float32", "gpu_memory_utilization": 0.5, "enforce_eager": True, "max_num_seqs": 4}
    return {
        "embed.backend": {"backend": name, "model": MISSING, "max_length": 16, "batch_size": 2, "device": "cpu",
                          "runtime": {"chunk_size": 4, "vllm": vllm}, "path": f"{MISSING}.npy", "dim": 4},
        "eval.generation.backend": {"backend": name, "device": "cpu", "batch_size": 2, "seed": 0, "dtype": "float32",
                                    "temperature": None, "vllm": vllm | {"max_model_len": 64, "max_lora_rank": 8}},
        "eval.judge.kind": {"kind": name, "model": MISSING, "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENV,
                            "timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.0, "smoke_test": True,
                            "device": "cpu", "concurrency": 1,
                            "price": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}},
        "pool.format": {"format": name, "path": f"{MISSING}.jsonl", "size": None, "seed": 0, "on_invalid": "error",
                        "max_prompt_chars": None, "sources": [{"name": "json", "format": "messages", "split": "train",
                                                               "limit": 2, "seed": 0,
                                                               "kwargs": {"data_files": MISSING}}]},
    }[kind]


PREFIX = {"embed.backend": "embed", "eval.generation.backend": "eval.generation", "eval.judge.kind": "eval.judge",
          "pool.format": "pool"}
ACCEPTS: dict[str, Callable[[dict], Any]] = {  # the check a config passes before any work
    "embed.backend": check_embed_config, "eval.generation.backend": check_generation_config,
    "eval.judge.kind": lambda cfg: JudgeConfig.from_dict(cfg, check_key=False), "pool.format": check_format_config}
BEFORE_WORK: dict[str, Callable[[dict], Any]] = {  # the real entry point (or the study's pre-work check)
    "embed.backend": check_embed_config, "eval.generation.backend": lambda cfg: make_generator(cfg, MISSING, None),
    "eval.judge.kind": lambda cfg: make_judge(cfg, MISSING), "pool.format": check_pool_config}
CONFIG_ENTRIES = [(kind, e.name, p) for kind, reg in CONFIG_REGISTRIES.items() for e in reg for p in e.params]


def with_value(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


@pytest.mark.parametrize("kind, name", [(k, n) for k, reg in CONFIG_REGISTRIES.items() for n in reg.names()])
def test_good_options_pass_without_loading_anything(kind, name):
    ACCEPTS[kind](good_config(kind, name))


@pytest.mark.parametrize("kind, name, param", CONFIG_ENTRIES, ids=[f"{k}:{n}.{p}" for k, n, p in CONFIG_ENTRIES])
def test_every_config_entry_rejects_bad_values_before_work(kind, name, param, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-a-real-key")
    rule = CONFIG_REGISTRIES[kind].get(name).params[param]
    assert rule.bad, f"{kind} {name}: {param} declares no constraint ({rule.rule})"
    key = f"{PREFIX[kind]}.{param}"
    for bad in rule.bad:
        with pytest.raises(InputError, match=rf"{re.escape(key)}\S* (must|is empty)"):
            BEFORE_WORK[kind](with_value(good_config(kind, name), param, bad))


def test_evaluation_names_the_suite_or_one_standalone_evaluator():
    assert {"alpaca_eval", "mt_bench", "reference_nll"} <= set(EVALUATORS.names())
    with pytest.raises(InputError, match="mt_bench runs inside eval.name=benchmarks"):
        evaluation({"name": "mt_bench"})
    assert [m.evaluator.name for m in evaluation({"name": "reference_nll"}).members] == ["reference_nll"]


def test_generate_key_drops_score_only_fields_and_keeps_undeclared_ones():
    """A field only the judge reads stays out of the generate key; a field nobody declared stays in it (a
    forgotten declaration costs a regeneration, never a stale answer)."""
    cfg = {"name": "benchmarks", "generation": {"seed": 0},
           "alpaca_eval": {"enabled": True, "reference_path": "r", "annotator": "a", "annotator_seed": 0, "x": 1},
           "mt_bench": {"enabled": True, "judge_prefill": "", "judge_max_tokens": 9, "reference": "gpt-4", "x": 1},
           "reference_nll": {"enabled": True, "max_length": 8, "x": 1}}
    key = evaluation(cfg).generate_key()
    for name in SUITE:
        assert key[name]["x"] == 1 and not set(key[name]) & EVALUATORS.get(name).score_only
    assert key["alpaca_eval"] == {"enabled": True, "reference_path": "r", "x": 1}
    assert key["mt_bench"] == {"enabled": True, "x": 1}
