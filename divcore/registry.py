"""The one registry shape for every plugin kind (metrics, selectors, ...): names map to entries, a name is
registered once, an unknown name gets a "did you mean", and parameters are checked against declared constraints
(:mod:`divcore.params`) before any work. Modelled on lm-evaluation-harness's registry and scikit-learn's
parameter validation; small enough that a library would add more than it saves.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from divcore.errors import InputError
from divcore.params import Param, from_annotation

E = TypeVar("E")


class RegistryError(RuntimeError):
    """A programming error in a registration (a duplicate name, a constraint on a parameter that does not exist)."""


def did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a known name is close to ``name``, else ``''``.

    >>> did_you_mean("novelsumm", ["novelsum", "vendi"])
    " (did you mean 'novelsum'?)"
    """
    close = difflib.get_close_matches(str(name), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def signature_params(fn: Callable, leading: int, declared: Mapping[str, Param]) -> dict[str, Param]:
    """Every keyword parameter of ``fn`` after its ``leading`` positional ones, each with its constraint: the
    declared one, else the type check its annotation implies."""
    sig = inspect.signature(fn, eval_str=True)
    names = list(sig.parameters)[leading:]
    unknown = set(declared) - set(names)
    if unknown:
        raise RegistryError(f"{fn.__qualname__}: constraints declared for parameters it does not take: "
                            f"{sorted(unknown)}")
    return {p: declared.get(p) or from_annotation(sig.parameters[p].annotation) for p in names}


def signature_defaults(fn: Callable, leading: int) -> dict[str, Any]:
    """The default values of ``fn``'s keyword parameters after its ``leading`` positional ones.

    >>> signature_defaults(lambda inputs, k=10, mode="x": 0, 1)
    {'k': 10, 'mode': 'x'}
    """
    params = list(inspect.signature(fn).parameters.values())[leading:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class Registry(Generic[E]):
    """Entries of one plugin kind by name. An entry has ``fn`` and ``params`` (name -> :class:`Param`)."""

    def __init__(self, kind: str, param_noun: str = "parameter") -> None:
        self.kind, self.param_noun = kind, param_noun
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        if name in self._entries:
            old = self._entries[name].fn  # type: ignore[attr-defined]
            raise RegistryError(f"{self.kind} {name!r} is registered twice: {old.__module__}.{old.__qualname__} "
                                f"and {entry.fn.__module__}.{entry.fn.__qualname__}")  # type: ignore[attr-defined]
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> E:
        if name not in self._entries:
            raise InputError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; known "
                             f"{self.kind}s: {', '.join(self.names())}")
        return self._entries[name]

    def check_params(self, name: str, params: Mapping[str, Any], where: str = "") -> E:
        """The entry, once ``params`` name only parameters it takes and each value satisfies its constraint."""
        entry = self.get(name)
        accepted: dict[str, Param] = entry.params  # type: ignore[attr-defined]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            hint = did_you_mean(unknown[0], list(accepted))
            raise InputError(f"{self.kind} {name!r} has no {self.param_noun}(s) {unknown}{hint}; it accepts "
                             f"{list(accepted)}")
        for key, value in params.items():
            accepted[key].check(value, f"{where or f'{self.kind} {name!r}'} {self.param_noun} {key}")
        return entry
