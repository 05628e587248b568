"""Errors a user can cause. Each message says what is wrong and what to do."""

from __future__ import annotations

from typing import Iterable, Sequence


class CnnvisError(Exception):
    """Base class of every error cnnvis raises for bad input; the CLI prints it as ``Error: …``."""

    #: Exit status the command line uses for this error (2: a usage mistake, 1: a runtime failure).
    exit_code = 1


class UnknownModelError(CnnvisError, LookupError):
    exit_code = 2


class UnknownLayerError(CnnvisError, LookupError):
    exit_code = 2


class WeightsError(CnnvisError):
    """Weights are missing, corrupt, unsafe or do not fit the architecture."""


class UnknownWeightsError(WeightsError, LookupError):
    """A weights name the model does not have (a usage mistake, like an unknown model)."""

    exit_code = 2


class ModelError(CnnvisError):
    """The model itself failed: its forward pass raised, or its output is not usable."""


class InputError(CnnvisError, ValueError):
    """A value given by the user (image, size, option) is unusable."""

    exit_code = 2


class BadImageError(InputError):
    """A file given as an image cannot be used: not an image, not a regular file, too large to open safely.

    ``path`` and ``problem`` say what is wrong (``"is a FIFO, not a regular file"``); ``advice`` what to do.
    :meth:`with_advice` adds a command's own way out (``--skip-bad``) where it has one.
    """

    def __init__(self, path: str, problem: str, advice: str = "remove it or give another file"):
        self.path, self.problem, self.advice = path, problem, advice
        super().__init__(f"{path} {problem}; {advice}")

    @property
    def note(self) -> str:
        """What is wrong, without the advice (for a list of skipped files)."""
        return f"{self.path} {self.problem}"

    def with_advice(self, advice: str) -> "BadImageError":
        return BadImageError(self.path, self.problem, advice)


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """``"ValueError: first line of the message"`` (just the type when the message is empty), one line."""
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def typo_distance(a: str, b: str) -> float:
    """Edit distance where swapping two neighbouring characters costs half an edit.

    A swap is the commonest typo (``vgg61`` for ``vgg16``), so it ranks first.
    """
    a, b = a.lower(), b.lower()
    prev2: list[float] = []
    prev = [float(j) for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        cur = [float(i)] + [0.0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0.0 if a[i - 1] == b[j - 1] else 1.0
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1] and a[i - 1] != a[i - 2]:
                cur[j] = min(cur[j], prev2[j - 2] + 0.5)
        prev2, prev = prev, cur
    return prev[-1]


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates a user most likely meant by ``word``, best first (may be empty).

    Candidates within one edit come first, ordered by distance; otherwise
    :func:`difflib.get_close_matches`, then names that contain ``word``.
    """
    import difflib

    candidates = list(dict.fromkeys(candidates))
    scored = sorted((typo_distance(word, c), i, c) for i, c in enumerate(candidates))
    near = [c for d, _, c in scored if d <= 1.0]
    if near:
        return near[:n]
    lowered = {c.lower(): c for c in candidates}
    fuzzy = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)]
    contains = [c for c in candidates if word.lower() in c.lower() and c not in fuzzy]
    return (fuzzy + contains)[:n]


def did_you_mean(word: str, candidates: Sequence[str], n: int = 5) -> str:
    """``"; did you mean a, b?"`` or an empty string when nothing is close."""
    matches = close_matches(word, candidates, n=n)
    return f"; did you mean {', '.join(matches)}?" if matches else ""
