"""Declared parameter constraints, checked before any work (scikit-learn's ``_parameter_constraints``, smaller).

A :class:`Param` is a test, the rule it enforces in words, and values it must reject (the common registry test
feeds them to every registered entry). :func:`from_annotation` derives the type check every parameter gets from
its annotation; a plugin declares narrower ones (``integer(lo=1)``, ``one_of("exact", "gradient")``) at
registration.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from divcore.errors import InputError


@dataclass(frozen=True)
class Param:
    rule: str
    test: Callable[[Any], bool]
    bad: tuple[Any, ...] = ()

    def check(self, value: Any, where: str) -> None:
        """Raise :class:`InputError` naming ``where`` unless ``value`` satisfies the rule.

        >>> integer(lo=1).check(0, "metrics.compute.0.params.n_clusters")
        Traceback (most recent call last):
        ...
        divcore.errors.InputError: metrics.compute.0.params.n_clusters must be an integer >= 1, got 0
        """
        if not self.test(value):
            raise InputError(f"{where} must be {self.rule}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo: float | None, hi: float | None, lo_open: bool) -> str:
    parts = [f"> {lo}" if lo_open else f">= {lo}"] if lo is not None else []
    parts += [f"<= {hi}"] if hi is not None else []
    return " and ".join(parts)


def _within(v: float, lo: float | None, hi: float | None, lo_open: bool) -> bool:
    return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)


def integer(lo: int | None = None, hi: int | None = None) -> Param:
    rule = "an integer" + (f" {_bounds(lo, hi, False)}" if lo is not None or hi is not None else "")
    bad = ("3", 2.5, True) + ((lo - 1,) if lo is not None else ()) + ((hi + 1,) if hi is not None else ())
    return Param(rule, lambda v: _is_int(v) and _within(v, lo, hi, False), bad)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Param:
    rule = "a finite number" + (f" {_bounds(lo, hi, lo_open)}" if lo is not None or hi is not None else "")
    bad = ("x", True, float("nan")) + ((lo - 1,) if lo is not None else ()) + ((hi + 1,) if hi is not None else ())
    return Param(rule, lambda v: _is_number(v) and _within(v, lo, hi, lo_open), bad)


def one_of(*choices: Any) -> Param:
    return Param(f"one of {list(choices)}", lambda v: any(v == c and type(v) is type(c) for c in choices),
                 ("no-such-choice", 3))


def flag() -> Param:
    return Param("true or false", lambda v: isinstance(v, bool), ("yes", 1))


def text() -> Param:
    return Param("a non-empty string", lambda v: isinstance(v, str) and bool(v), (3, ""))


def sequence_of(item: Param) -> Param:
    """A non-empty list (or tuple) whose every item satisfies ``item``."""
    return Param(f"a non-empty list, each item {item.rule}",
                 lambda v: isinstance(v, (list, tuple)) and bool(v) and all(item.test(x) for x in v),
                 ("5", [], [item.bad[0]] if item.bad else []))


def mapping() -> Param:
    """A mapping of named options (e.g. extra ``vllm.LLM`` arguments), each option checked on its own."""
    return Param("a mapping of option names to values", lambda v: isinstance(v, Mapping), ("x", [1]))


def optional(p: Param) -> Param:
    return Param(f"{p.rule} or null", lambda v: v is None or p.test(v), p.bad)


def anything() -> Param:
    return Param("anything", lambda v: True)


_SIMPLE = {int: integer, float: number, bool: flag, str: text}


def from_annotation(annotation: Any) -> Param:
    """The type check an annotation implies: ``int``, ``float``, ``bool``, ``str``, ``Sequence[int|float]`` and
    their ``| None`` forms; anything else is not checked.

    >>> from_annotation(int | None).rule
    'an integer or null'
    """
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        inner = from_annotation(rest[0]) if len(rest) == 1 else anything()
        return optional(inner) if type(None) in args else inner
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]()
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence) and args and args[0] in (int, float):
        return sequence_of(_SIMPLE[args[0]]())
    return anything()


POSITIVE_INT = integer(lo=1)
SEED = integer(lo=0)  # numpy / faiss seeds are non-negative
NON_NEGATIVE = number(lo=0)
COSINE = number(-1, 1)  # a cosine-similarity threshold
UNIT_INTERVAL = number(0, 1)
