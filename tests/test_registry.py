"""One registry shape for metrics and selectors: duplicates are errors, unknown names get a "did you mean",
and every registered entry rejects bad parameter values with the project's InputError before any work."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import metrics
import selection
from divcore import InputError
from divcore.params import POSITIVE_INT, integer, one_of
from divcore.registry import Registry, RegistryError, signature_params
from metrics.registry import METRICS, check_config
from selection.registry import SELECTORS

REGISTRIES = {"metric": METRICS, "selector": SELECTORS}
ENTRIES = [(kind, e.name, p) for kind, reg in REGISTRIES.items() for e in reg for p in e.params]


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


def test_duplicate_name_is_an_error():
    with pytest.raises(RegistryError, match="metric 'novelsum' is registered twice"):
        metrics.register("novelsum", needs=("embeddings",), family="x")(lambda inputs: 0.0)
    with pytest.raises(RegistryError, match="selector 'random' is registered twice"):
        selection.register("random")(lambda pool, n, seed: [])
    assert "novelsum" in METRICS and METRICS.get("novelsum").fn.__module__ == "metrics.builtin"  # not replaced


def test_unknown_names_suggest_the_closest():
    with pytest.raises(InputError, match=r"unknown metric 'novelsumm' \(did you mean 'novelsum'\?\)"):
        check_config("novelsumm", {})
    with pytest.raises(InputError, match=r"unknown selector 'kcentre' \(did you mean 'kcenter'\?\)"):
        selection.get_selector("kcentre")
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


def test_evaluators_share_the_registry_shape():
    from eval.evaluators import EVALUATORS, evaluate, register

    assert "reference_nll" in EVALUATORS
    with pytest.raises(InputError, match=r"unknown evaluator 'reference_nl' \(did you mean 'reference_nll'\?\)"):
        evaluate("reference_nl", "m", None, {})
    with pytest.raises(RegistryError, match="evaluator 'reference_nll' is registered twice"):
        register("reference_nll")(lambda model, adapter, cfg: {})
