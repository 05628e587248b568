"""The one progress-callback type of cnnvis: ``progress(done, total)``.

The library never prints; long functions take a ``progress`` callback and call it with how much
is done out of how much (in the unit the function documents: images, filter-steps, units).
``done`` may be fractional where work moves within an item. The command line supplies the
callback that draws a bar (or prints a line per finished layer when stderr is not a terminal).
"""

from __future__ import annotations

from typing import Callable, Optional

Progress = Optional[Callable[[float, float], None]]


def scaled(progress: Progress, offset: float, scale: float, total: float) -> Progress:
    """A callback for a sub-task: its ``(done, sub_total)`` is reported as
    ``offset + scale * done / sub_total`` out of ``total``.

    Example:
        >>> seen = []
        >>> scaled(lambda d, t: seen.append((d, t)), 2, 3, 10)(1, 4)
        >>> seen
        [(2.75, 10)]
    """
    if progress is None:
        return None

    def report(done: float, sub_total: float) -> None:
        progress(offset + scale * (done / sub_total if sub_total else 1.0), total)

    return report


def duration(seconds: float) -> str:
    """A rough, readable duration: ``45 s``, ``4 min``, ``2 h 05 min``.

    Example:
        >>> duration(44.6), duration(250), duration(7500)
        ('45 s', '4 min', '2 h 05 min')
    """
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
