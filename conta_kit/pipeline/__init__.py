"""The pipeline: one round as named steps (:mod:`.round`), scoring (:mod:`.evaluate`), the CONTA loop over
rounds (:mod:`.rounds`), seeds in parallel (:mod:`.jobs`) and the confounding sweep (:mod:`.sweep`)."""

from .jobs import load_summary, run_jobs, run_seeds
from .round import run_baseline, run_round
from .rounds import load_round_classifier, run_conta, seed_run

__all__ = ["load_round_classifier", "load_summary", "run_baseline", "run_conta", "run_jobs", "run_round",
           "run_seeds", "seed_run"]
