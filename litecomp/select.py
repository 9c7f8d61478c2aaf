"""Choosing layers and tensors: ``targets`` and ``ignore``, spelled as llm-compressor's
recipes spell them, for every workflow (pruning, quantization, calibrated compression,
shrinking, export).

A *pattern* is one of

- a glob on the name (``fnmatch``, case-sensitive, full match): ``"*.weight"``,
  ``"transformer_decoder.layers.*.linear1.weight"``; ``*`` also crosses dots;
- ``"re:<regex>"``: a regular expression that must match the whole name
  (``"re:.*\\.(q|k|v)_proj\\.weight"``); a compiled ``re.Pattern`` means the same;
- in ``litecomp.torch`` also a module class name such as ``"Linear"``, which matches every
  module of that class or a subclass of it.

``targets`` is a pattern or a list of them (None: the workflow's default set); ``ignore``
removes names from what ``targets`` chose.  A name is selected when it matches any target
and no ignore pattern.

>>> names = ["embed.weight", "layers.0.fc1.weight", "layers.0.fc1.bias", "fc.weight"]
>>> select(names, targets="*.weight", ignore=["embed.*"])
['layers.0.fc1.weight', 'fc.weight']
>>> select(names, targets="re:layers\\.\\d+\\..*")
['layers.0.fc1.weight', 'layers.0.fc1.bias']
>>> select(names, targets="attn.*")
Traceback (most recent call last):
...
litecomp.errors.ArgumentError: targets: ['attn.*'] match none of the 4 names (e.g. 'embed.weight', 'layers.0.fc1.weight', 'layers.0.fc1.bias')
"""

import fnmatch
import re
import warnings
from typing import Callable, Iterable, Optional, Sequence

from .errors import ArgumentError

__all__ = ["Selector", "patterns", "matcher", "select"]


def patterns(value, name: str = "targets") -> Optional[tuple]:
    """``value`` as a tuple of patterns (None stays None); checks every pattern."""
    if value is None:
        return None
    if isinstance(value, (str, re.Pattern)):
        value = [value]
    try:
        items = tuple(value)
    except TypeError:
        raise ArgumentError(f"{name}: expected a pattern or a list of patterns, got "
                            f"{type(value).__name__}") from None
    for p in items:
        if isinstance(p, re.Pattern):
            continue
        if not isinstance(p, str) or not p:
            raise ArgumentError(f"{name}: expected non-empty strings, got {p!r}")
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise ArgumentError(f"{name}: {p!r} is not a valid regular expression "
                                    f"({exc})") from None
    return items


def _one(pattern) -> Callable[[str, Sequence[str]], bool]:
    if isinstance(pattern, re.Pattern):
        return lambda n, classes: pattern.fullmatch(n) is not None
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda n, classes: rx.fullmatch(n) is not None
    return lambda n, classes: fnmatch.fnmatchcase(n, pattern) or pattern in classes


class Selector:
    """Compiled ``targets`` / ``ignore``: ``sel(name, classes=())`` says whether a name (of a
    module whose class names, base classes included, are ``classes``) is selected.

    ``targets=None`` selects everything ``ignore`` does not remove; the workflow applies its
    own default set first (e.g. every float tensor with 2 or more dimensions).
    """

    def __init__(self, targets=None, ignore=None):
        self.targets = patterns(targets, "targets")
        self.ignore = patterns(ignore, "ignore") or ()
        self._t = None if self.targets is None else [_one(p) for p in self.targets]
        self._i = [_one(p) for p in self.ignore]

    def __call__(self, name: str, classes: Sequence[str] = ()) -> bool:
        if self._t is not None and not any(m(name, classes) for m in self._t):
            return False
        return not any(m(name, classes) for m in self._i)

    def unmatched_targets(self, names: Iterable[str], classes_of=None) -> list:
        """The target patterns that match none of ``names``."""
        if self.targets is None:
            return []
        names = list(names)
        out = []
        for p, m in zip(self.targets, self._t):
            if not any(m(n, classes_of(n) if classes_of else ()) for n in names):
                out.append(p)
        return out

    def __repr__(self):
        return f"Selector(targets={self.targets!r}, ignore={self.ignore!r})"


def matcher(targets=None, ignore=None) -> Selector:
    """A ``Selector`` (accepts one already made)."""
    if isinstance(targets, Selector) and ignore is None:
        return targets
    return Selector(targets, ignore)


def _example(names, k=3):
    shown = ", ".join(repr(n) for n in names[:k])
    return f" (e.g. {shown})" if names else ""


def select(names, targets=None, ignore=None, *, classes_of=None, what="names",
           strict=True) -> list:
    """The names, in their order, that ``targets`` selects and ``ignore`` does not remove.

    ``classes_of(name)`` gives a module's class names (torch). With ``strict`` (default) an
    ArgumentError is raised when explicit targets match nothing at all, and a UserWarning
    names each target pattern that matched nothing while others did.
    """
    names = list(names)
    sel = matcher(targets, ignore)
    chosen = [n for n in names if sel(n, classes_of(n) if classes_of else ())]
    if strict and sel.targets is not None:
        unmatched = sel.unmatched_targets(names, classes_of)
        shown = [p if isinstance(p, str) else f"re:{p.pattern}" for p in sel.targets]
        if len(unmatched) == len(sel.targets):
            raise ArgumentError(f"targets: {shown} match none of the {len(names)} {what}"
                                f"{_example(names)}")
        for p in unmatched:
            warnings.warn(f"targets: {p!r} matches none of the {what}", UserWarning,
                          stacklevel=2)
    return chosen
