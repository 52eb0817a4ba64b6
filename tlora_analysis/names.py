"""The one rule for selecting modules and layers by name (adapter targets, ``layers=``, figures, the runner).

A *pattern* is a string. It selects a dotted module name (``bert.encoder.layer.0.attention.self.query``)
when

1. it equals the name, or
2. it equals the name's last whole components (a dotted suffix): ``"query"`` and ``"self.query"``
   select the name above; ``"query"`` never selects ``xquery_proj`` or ``query_proj``; or
3. it is written ``"re:PATTERN"`` and the regular expression PATTERN matches the *whole* name
   (``re.fullmatch``): ``"re:.*layer\\.1\\..*(query|key)"``.

A *selection* is one pattern or a list (tuple) of patterns; a name is selected when any of them
selects it. A bare string is one pattern, never a list of letters. Nothing else is a pattern.
This module imports nothing beyond the standard library, so every layer of the package can use it.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = ["REGEX_PREFIX", "NameSelection", "as_patterns", "name_matches", "matches_any", "select_names",
           "unmatched", "in_module", "looks_like_regex"]

REGEX_PREFIX = "re:"
NameSelection = str | Sequence[str]

_REGEX_CHARS = set("^$*+?[](){}|\\")


def looks_like_regex(pattern: str) -> bool:
    """Whether a pattern without ``re:`` holds regular-expression syntax (a hint for error messages)."""
    return not pattern.startswith(REGEX_PREFIX) and bool(_REGEX_CHARS & set(pattern))


def _check_one(pattern: object, what: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"{what} must be a module name, a dotted suffix such as 'query', or 're:REGEX'; "
                        f"got {pattern!r}")
    if pattern.startswith(REGEX_PREFIX):
        try:
            re.compile(pattern[len(REGEX_PREFIX):])
        except re.error as exc:
            raise ValueError(f"{what} entry {pattern!r} is not a valid regular expression ({exc}); fix the pattern "
                             "after 're:', or give module names such as ['query', 'value']") from exc
    return pattern


def as_patterns(selection: NameSelection, what: str = "the name selection") -> tuple[str, ...]:
    """``selection`` as a non-empty tuple of checked patterns (a bare string is one pattern).

    Raises TypeError for anything that is not a string or a list of non-empty strings and
    ValueError for an empty list or a regular expression that does not compile; each message
    names ``what`` and the fix.
    """
    if isinstance(selection, str):
        return (_check_one(selection, what),)
    if isinstance(selection, (bytes, dict)) or not isinstance(selection, Iterable):
        raise TypeError(f"{what} must be a name, a dotted suffix, 're:REGEX', or a list of these; "
                        f"got {type(selection).__name__} {selection!r}")
    patterns = tuple(_check_one(p, what) for p in selection)
    if not patterns:
        raise ValueError(f"{what} is an empty list; give at least one name such as 'query'")
    return patterns


def name_matches(name: str, pattern: str) -> bool:
    """Whether one pattern selects ``name`` (the rule in this module's docstring)."""
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX):], name) is not None
    return name == pattern or name.endswith("." + pattern)


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether any of ``patterns`` selects ``name``."""
    return any(name_matches(name, p) for p in patterns)


def select_names(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names any pattern selects, in their given order."""
    return [n for n in names if matches_any(n, patterns)]


def unmatched(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The patterns that select none of ``names``."""
    return [p for p in patterns if not any(name_matches(n, p) for n in names)]


def in_module(name: str, module: str) -> bool:
    """Whether a parameter or submodule ``name`` lies inside the module named ``module`` (or is it)."""
    return not module or name == module or name.startswith(module + ".")
