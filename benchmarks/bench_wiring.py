"""Can the backdoor adjustment act? Each wiring of ``ContaCfg`` on ground-truth C and x_m; prints JSON.

    .venv/bin/python benchmarks/bench_wiring.py [--images 400] [--epochs 6] [--threads 1] > result.json

For every wiring (the paper-literal one, the kit's default and the steps between): the gradient reaching W1/W2
against the backbone's, the attention's entropy and whether its top prototype is a class of the image (against
chance), and M's share of the logits (:func:`~conta_kit.methods.conta.diagnostics.adjustment_health`), at
initialisation on the train images and, after training the adjusted classifier for ``--epochs`` on them
(smoke preset otherwise), on the val images (:func:`~conta_kit.methods.conta.steps.m_statistics`, with the
NWGM gap). Not a timing benchmark: these are the numbers behind docs/conta.md's choice of the default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from conta_kit.config import RunCfg
from conta_kit.data import collate
from conta_kit.data.splits import load_splits
from conta_kit.data.transforms import WithXm
from conta_kit.io import RoundLayout
from conta_kit.methods.conta.diagnostics import adjustment_health
from conta_kit.methods.conta.steps import build_round_classifier, feature_grid, ground_truth_ingredients, m_statistics
from conta_kit.pipeline.round import train_classifier

WIRINGS = {
    "paper-literal": {"fusion": "last", "fusion_init": "zero", "attn_init": "official", "m_scale": "paper"},
    "last, O(1) M, normal init, match": {"fusion": "last", "fusion_init": "normal", "attn_init": "match",
                                         "m_scale": "max"},
    "penultimate, official attention": {"attn_init": "official"},
    "penultimate, scaled attention": {"attn_init": "scaled"},
    "default (penultimate, match)": {},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, options in WIRINGS.items():
        cfg = RunCfg.from_params("smoke", num_train=args.images, num_val=200, cls_epochs=args.epochs, **options)
        splits = {k: v for k, v in load_splits(cfg).items() if k in ("train", "val")}
        grid = feature_grid(build_round_classifier(cfg, splits["train"].num_classes, None), cfg)
        conf, x_m = ground_truth_ingredients(cfg, splits, grid)
        torch.manual_seed(cfg.seed)
        model = build_round_classifier(cfg, splits["train"].num_classes, conf)
        batch = collate([splits["train"][i] for i in range(min(64, args.images))])
        init = adjustment_health(model, batch["image"], x_m["train"][:len(batch["labels"])].float() / 255,
                                 batch["labels"])
        data = {k: WithXm(v, x_m[k]) for k, v in splits.items()}
        with tempfile.TemporaryDirectory() as tmp:
            model, _ = train_classifier(cfg, RoundLayout(Path(tmp)), data, torch.device("cpu"), confounders=conf,
                                        previous=None, round_index=1, progress=False, resume=False)
        st = m_statistics(model, data["val"], 64, torch.device("cpu"), conf.class_ids)
        st.pop("alpha", None)
        rows[name] = {"options": options, "at_init": init, "trained": {
            "logit_share_from_m": st["logit_share_from_m"], "nwgm_mean_abs_gap": st.get("nwgm", {}).get("mean_abs_gap"),
            **{k: st["attention"][k] for k in ("entropy", "top_is_present_class", "max_alpha")}}}
        print(json.dumps({name: rows[name]}), file=sys.stderr, flush=True)  # progress
    print(json.dumps({"images": args.images, "epochs": args.epochs, "wirings": rows}, indent=1))


if __name__ == "__main__":
    main()
