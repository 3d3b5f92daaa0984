"""Progress bars: ``tqdm.auto``, silenced everywhere at once in a headless notebook run (a saved notebook would
keep frozen widget bars; the kit's log reports the epochs and rounds there instead)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _tqdm

_quiet = False


def quiet(on: bool = True) -> None:
    """Silence (or restore) every progress bar the kit draws from now on."""
    global _quiet
    _quiet = on


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm``, disabled while :func:`quiet` is on."""
    if _quiet:
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
