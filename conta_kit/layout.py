"""Every path of a run folder, named once: :class:`RunLayout` (a run, its seeds, rounds, arms and sweep cells)
and :class:`RoundLayout` (one round's checkpoints and artifacts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class RoundLayout:
    """The files of one round's folder (``round_<t>/``; the baseline command writes round 0 into the run
    folder itself)::

        metrics.json                          the round is done when it exists
        checkpoints/<stage>/last.pt           stage: classifier, classifier_ft (W-OoD or plain), segmenter
        artifacts/<name>                      pseudo_masks.pt, attention.pt, wood_prototypes.pt, mined_ood.csv
        x_m.pt  confounders.pt                the next round's masks (split -> (N, H, W) uint8) and C
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RoundLayout({str(self.path)!r})"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def done(self) -> bool:
        return self.metrics.exists()

    def checkpoint_dir(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def checkpoint(self, stage: str) -> Path:
        return self.checkpoint_dir(stage) / "last.pt"

    @property
    def final_classifier(self) -> Path:
        """The round's classifier after its last stage: the fine-tuned one when the round has it."""
        ft = self.checkpoint("classifier_ft")
        return ft if ft.exists() else self.checkpoint("classifier")

    def artifact(self, name: str) -> Path:
        return self.path / "artifacts" / name

    @property
    def x_m(self) -> Path:
        return self.path / "x_m.pt"

    @property
    def confounders(self) -> Path:
        return self.path / "confounders.pt"


def _indexed(path: Path, prefix: str, cast: Callable[[str], Any]) -> list[Any]:
    return sorted(cast(p.name[len(prefix):]) for p in path.glob(f"{prefix}*") if p.is_dir())


class RunLayout:
    """Every path of a run folder, named once::

        params.json  env.json  metrics.json  figures/<name>.png  index.html  index.json  report.md
        seed_<s>/                 a run folder of one seed (``conta-kit conta``, notebooks)
        round_<t>/                a round (:class:`RoundLayout`)
        oracle/                   the oracle's round (the baseline trained at rho = chance)
        conta_gt/                 CONTA with ground-truth ingredients (C and x_m from the true masks)
        rho_<rho>/<arm>/seed_<s>/ a cell of the confounding sweep
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.path)!r})"

    @property
    def params(self) -> Path:
        return self.path / "params.json"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def index_html(self) -> Path:
        return self.path / "index.html"

    @property
    def index_json(self) -> Path:
        return self.path / "index.json"

    @property
    def report(self) -> Path:
        """``report.md`` (notebook 06)."""
        return self.path / "report.md"

    @property
    def sweep_tables(self) -> Path:
        """``sweep_tables.md`` (notebook 08)."""
        return self.path / "sweep_tables.md"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"

    def seed(self, seed: int) -> RunLayout:
        return RunLayout(self.path / f"seed_{seed}")

    def seeds(self) -> list[int]:
        """The seeds with a folder here, in order."""
        return _indexed(self.path, "seed_", int)

    def round(self, t: int) -> RoundLayout:
        return RoundLayout(self.path / f"round_{t}")

    @property
    def oracle(self) -> RoundLayout:
        """The interventional oracle: round 0's recipe with the classifier trained at rho = chance."""
        return RoundLayout(self.path / "oracle")

    @property
    def conta_gt(self) -> RoundLayout:
        """CONTA's ceiling arm: one adjusted round over ground-truth C and x_m."""
        return RoundLayout(self.path / "conta_gt")

    def rounds(self) -> list[int]:
        """The rounds with a folder here (finished or not), in order."""
        return _indexed(self.path, "round_", int)

    def sweep_arm(self, rho: float, arm: str) -> RunLayout:
        return RunLayout(self.path / f"rho_{float(rho):g}" / arm)

    def rhos(self) -> list[float]:
        """The rhos of a sweep folder, in order."""
        return _indexed(self.path, "rho_", float)
