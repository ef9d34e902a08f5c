"""The one input-checking convention of ``recsys``, shared by ``recsys.bandits`` and ``recsys.ope``.

Every message reads ``<name>: expected <what>, got <what was received>[; <what to do>]``: the
argument's name first, spelled as the caller spells it and unquoted (as ``recsys.events`` names a
field), so a message can be matched and grepped by its prefix. A value of the wrong kind raises
``TypeError``; a value of the right kind that breaks a rule raises ``ValueError``.

Checks cost almost nothing on valid input, because the estimators check arrays of hundreds of
millions of cells: finiteness is one pass (a sum for large arrays: NaN and infinity propagate into
it), and only once that fails is the array searched for the offending position. The package modules
(``recsys.bandits.validation``, ``recsys.ope.validation``) keep their domain checks and build them
from these primitives.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

import numpy as np

_SUM_CELLS = 2**22
"""From this size on, summing beats ``isfinite(...).all()`` (no 1-byte-per-cell temporary)."""


def message(name: str, expected: str, received: object, fix: str | None = None) -> str:
    """The convention's message: ``name: expected ..., got ...[; fix]``."""
    text = f"{name}: expected {expected}, got {received}"
    return f"{text}; {fix}" if fix else text


def as_array(value: object, name: str, ndim: int) -> np.ndarray:
    """``value`` as a numeric ndarray with ``ndim`` dimensions, or a ValueError naming ``name``."""
    if value is None:
        raise ValueError(message(name, f"a {ndim}-d array", "None", "it is required"))
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(message(name, f"a {ndim}-d array", f"shape {array.shape}"))
    if array.dtype == object:
        raise ValueError(message(name, "a numeric array", "dtype object"))
    return array


def first_non_finite(array: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinity in a numeric array, or None when all are finite.

    Valid input costs one pass: an elementwise test for arrays that fit in cache, a sum (no
    temporary array) for larger ones, where an overflowing sum of finite values falls through to
    the exact elementwise test.
    """
    if array.dtype.kind not in "fc" or array.size == 0:
        return None
    if array.size < _SUM_CELLS:
        if np.isfinite(array).all():
            return None
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            total = array.sum()
        if math.isfinite(abs(total)):
            return None
    bad = ~np.isfinite(array)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), array.shape))


def check_finite(array: np.ndarray, name: str, fix: str | None = None) -> None:
    """Raise a ValueError naming ``name`` and the first bad position if ``array`` holds NaN/inf."""
    where = first_non_finite(array)
    if where is not None:
        at = where[0] if len(where) == 1 else where
        value = array[where]
        raise ValueError(message(name, "finite values", f"{value} at index {at}", fix))


def check_index(array: np.ndarray, name: str, upper: int, upper_name: str) -> None:
    """Integer ids in ``[0, upper)``, where ``upper_name`` says where the bound comes from."""
    expected = f"integers in [0, {upper_name}) = [0, {upper})"
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(message(name, expected, f"dtype {array.dtype}"))
    if array.size:
        low, high = array.min(), array.max()
        if low < 0 or high >= upper:
            raise ValueError(message(name, expected, f"values in [{low}, {high}]"))


def check_probabilities(array: np.ndarray, name: str) -> None:
    """Probabilities of things that happened: finite and in (0, 1]."""
    check_finite(array, name)
    if not array.size:
        return
    expected = "probabilities in (0, 1]"
    if array.min() <= 0:
        raise ValueError(
            message(
                name,
                expected,
                f"{int((array <= 0).sum())} values <= 0",
                "a shown item must have had a positive probability of being shown; "
                "fix the logging before evaluating",
            )
        )
    if array.max() > 1:
        raise ValueError(
            message(
                name,
                expected,
                f"{int((array > 1).sum())} values above 1 (max {array.max():.6g})",
                "were scores logged instead of probabilities?",
            )
        )


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(high) and math.isinf(low):
        return "a finite real number" if high_open and low_open else "a real number"
    if math.isinf(high):
        finite = "a finite real number" if high_open else "a real number"
        return f"{finite} {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f"a real number {'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"a real number in {left}{low:g}, {high:g}{right}"


def check_scalar(
    value: object,
    name: str,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real hyperparameter inside an interval (closed unless ``*_open``), returned as a float.

    Booleans and non-numbers raise ``TypeError``; NaN and values outside raise ``ValueError``.
    An open infinite bound excludes infinity (``high_open=True`` with ``high=inf`` means finite).
    """
    expected = _interval(low, high, low_open, high_open)
    is_scalar_array = isinstance(value, np.ndarray) and value.ndim == 0
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, numbers.Real) or (is_scalar_array and value.dtype.kind in "iuf")
    ):
        raise TypeError(message(name, expected, f"{value!r} of type {type(value).__name__}"))
    v = float(value)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):  # NaN fails both comparisons
        raise ValueError(message(name, expected, repr(value)))
    return v


def did_you_mean(received: str, known: Iterable[str], n: int = 3) -> str | None:
    """The ``fix`` part of a message for a misspelt name: ``did you mean a or b?``, naming the
    closest of ``known`` (at most ``n``, and only those about as close as the closest), or None
    when none is close."""
    scores = sorted(((difflib.SequenceMatcher(None, received, name).ratio(), name)
                     for name in set(known)), reverse=True)
    close = [name for score, name in scores[:n] if score >= max(0.6, scores[0][0] - 0.1)]
    if not close:
        return None
    return f"did you mean {' or '.join(close)}?"
