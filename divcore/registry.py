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


def _origin(entry: Any) -> str:
    """Where an entry was defined: its function, or (an entry without one, e.g. a pool format read by another) its
    type."""
    fn = getattr(entry, "fn", None) or type(entry)
    return f"{fn.__module__}.{fn.__qualname__}"


class Registry(Generic[E]):
    """Entries of one plugin kind by name. An entry has ``fn`` and ``params`` (name -> :class:`Param`)."""

    def __init__(self, kind: str, param_noun: str = "parameter", also: tuple[str, ...] = ()) -> None:
        """``kind`` names the plugin kind in messages (a config key such as ``embed.backend`` for plugins chosen
        by one); ``also``: values the caller accepts besides the entries (``pool.format``'s ``auto``), listed
        in the unknown-name message."""
        self.kind, self.param_noun, self.also = kind, param_noun, also
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered twice: {_origin(self._entries[name])} and "
                                f"{_origin(entry)}")
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
            known = [*self.names(), *self.also]
            raise InputError(f"unknown {self.kind} {name!r}{did_you_mean(name, known)}; known "
                             f"{self.kind}s: {', '.join(known)}")
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

    def check_config(self, name: str, cfg: Mapping[str, Any], prefix: str) -> E:
        """The entry for a plugin chosen by a config group (``embed``, ``eval.judge``, ``pool``, ...), once every
        parameter it declares that ``cfg`` sets satisfies its constraint; errors name the key, ``<prefix>.<key>``.

        Declared keys may be dotted (``runtime.vllm.dtype``: a nested node). Keys the entry does not declare are
        left alone: sibling options of one config group share keys (``embed.batch_size`` is unused by
        ``precomputed``), and each group's own checks handle the group-wide ones.

        >>> from types import SimpleNamespace
        >>> from divcore.params import POSITIVE_INT
        >>> reg = Registry("embed.backend")
        >>> _ = reg.add("x", SimpleNamespace(fn=print, params={"runtime.chunk_size": POSITIVE_INT}))
        >>> reg.check_config("x", {"runtime": {"chunk_size": 0}, "batch_size": "unread here"}, "embed")
        Traceback (most recent call last):
        ...
        divcore.errors.InputError: embed.runtime.chunk_size must be an integer >= 1, got 0
        """
        entry = self.get(name)
        for key, rule in entry.params.items():  # type: ignore[attr-defined]
            found, value = _lookup(cfg, key)
            if found:
                rule.check(value, f"{prefix}.{key}")
        return entry


def _lookup(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``cfg`` sets the dotted key, else ``(False, None)`` (also when a node on the way is
    missing or is no mapping: that node's own declared constraint reports it)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
