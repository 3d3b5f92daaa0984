"""Which benchmark recipe gives a baseline whose CAMs localise: a ladder of recipes, each ingredient added to the
one before, round 0's classifier trained on the baseline's images (at ``--rho``) and on the oracle's (rho =
chance), scored on **val** only (this chooses the recipe; the README's seed scores are on train); prints JSON.

    .venv/bin/python benchmarks/recipe_health.py [--seeds 0] [--rho 0.5] [--jobs 2] [--out results.json]
    .venv/bin/python benchmarks/recipe_health.py --markdown results.json [more.json ...]
        [--update docs/benchmark_health.md [--block recipe-health]] [--no-geometry]

Per (recipe, arm, seed): seed mIoU at the best threshold of the grid on val, the resolution ceiling (ground truth
average-pooled to the feature grid, same thresholds), their ratio, where the CAM peaks and its mass fall
(:class:`~conta_kit.cam.diagnostics.CamLocalisation`, per class too) and the classifier's training seconds.
The recipes are the ``default`` preset (``--preset``) with these overrides, each step keeping the ones
before it, the ladder ending at the preset as it is:

* ``prior``: the earlier recipe (``layout="prior"``: context patches follow the object's box; plain objects
  at the class table's sizes; no shift);
* ``+strip``: the preset's layout (``"prior_strip"``: a context's extent no longer follows the object);
* ``+pattern``: its ``object_texture`` (``"pattern"``: a class-specific surface pattern inside each object);
* ``+shift``: its ``aug_shift`` (20 px at 96 px): training images translated, so the border tells less about
  how high an object stands;
* ``+glass``: its ``train_windows`` (``"glass"``: the train's windows dark panes inside its silhouette and mask,
  as VOC annotates them; ``"open"`` before);
* ``+scales``: its ``cam_scales`` ((1.0, 1.5): IRNet's 0.5 view, a 6 x 6 grid at 96 px, dropped; (1.0, 0.5, 1.5)
  before). This is the preset.

and one step beyond it, measured beside the ladder because it was the preset's before the three-seed ladder
(docs/benchmark_health.md) did not support it:

* ``+scale``: ``object_scale=1.4`` (objects 1.4x taller: nearer VOC's share of the image, but the low classes
  pushed against the bottom edge).

Each job is one process on one thread, ``--jobs`` at a time; the numbers are deterministic per machine and seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from typing import Any

from _common import best_on_val, emit, environment, mean_std_cell, overrides_from

#: the earlier recipe: the ladder's first step
EARLIER: dict[str, Any] = {"layout": "prior", "object_texture": "plain", "object_scale": 1.0, "aug_shift": 0,
                           "train_windows": "open", "cam_scales": (1.0, 0.5, 1.5)}
#: each later step sets these fields to the preset's own values (so the last step is the preset as it is)
LADDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prior", ()),
    ("+strip", ("layout",)),
    ("+pattern", ("object_texture",)),
    ("+shift", ("aug_shift",)),
    ("+glass", ("train_windows",)),
    ("+scales", ("cam_scales",)),
)
#: steps beyond the preset: (name, overrides added to the preset's own recipe)
BEYOND: tuple[tuple[str, dict[str, Any]], ...] = (("+scale", {"object_scale": 1.4}),)


def recipes(preset: str = "default",
            also: tuple[tuple[str, dict[str, Any]], ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The ladder's cumulative overrides of ``preset``: [(name, params)], the first the earlier recipe, each
    later one the one before with its fields set to the preset's values (the last: the preset itself), then the
    steps of :data:`BEYOND` and ``also`` ((name, overrides), from ``--also``), each added to the preset's recipe."""
    from conta_kit.config import RunCfg

    cfg = RunCfg.preset_cfg(preset)
    value = {**{f: getattr(cfg.data, f) for f in ("layout", "object_texture", "object_scale", "train_windows")},
             **{f: getattr(cfg.baseline, f) for f in ("aug_shift", "cam_scales")}}
    out, params = [], dict(EARLIER)
    for name, fields in LADDER:
        params = {**params, **{f: value[f] for f in fields}}
        out.append((name, dict(params)))
    return out + [(name, {**params, **extra}) for name, extra in (*BEYOND, *also)]


def probe(job: tuple[str, dict[str, Any], str, int, float, str]) -> dict[str, Any]:
    """Train round 0's classifier of one (recipe, arm, seed) on one thread and score its CAMs on val."""
    import torch

    from conta_kit.config import RunCfg
    from conta_kit.data.splits import classifier_stream, oracle_train, scene_splits
    from conta_kit.layout import RoundLayout
    from conta_kit.methods.conta.steps import feature_grid
    from conta_kit.pipeline.evaluate import evaluate_cams
    from conta_kit.pipeline.round import train_classifier

    name, params, arm, seed, rho, preset = job
    torch.set_num_threads(1)
    cfg = RunCfg.from_params(preset, seed=seed, cooccurrence=rho, **params)
    splits = scene_splits(cfg.data, seed=seed, splits=("train", "val"))
    data = dict(splits)
    stream = oracle_train(cfg) if arm == "oracle" else classifier_stream(cfg)  # as the pipeline's round 0
    if stream is not None:
        data["classifier_train"] = stream
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model, _ = train_classifier(cfg, RoundLayout(tmp), data, device, confounders=None, previous=None,
                                    round_index=0, progress=False, resume=False)
        train_s = time.perf_counter() - t0
    grid = feature_grid(model, cfg)
    g = cfg.baseline.threshold_grid
    val = evaluate_cams(model, splits["val"], cfg, g, device, tuple(splits["train"].paired_context), False, grid=grid)
    best_t, seed_miou, ceiling = best_on_val(val, g)
    loc = val["localisation"]
    return {"recipe": name, "params": params, "arm": arm, "seed": seed, "rho": rho,
            "train_rho": data["classifier_train"].rho if arm == "oracle" else rho,
            "val_seed_miou": seed_miou, "best_threshold": best_t, "val_ceiling_miou": ceiling,
            "share_of_ceiling": seed_miou / ceiling, "cam_peak_on_object": loc["cam_peak_on_object"],
            "cam_mass_in_object": loc["cam_mass_in_object"], "object_pixel_share": loc["object_pixel_share"],
            "cam_empty_share": loc["cam_empty_share"],
            "cam_peak_on_object_per_class": loc["cam_peak_on_object_per_class"],
            "cam_peak_in_box": loc["cam_peak_in_box"], "cam_peak_in_box_per_class": loc["cam_peak_in_box_per_class"],
            "cam_peak_offset_y_per_class": loc["cam_peak_offset_y_per_class"],
            **{k: loc[k] for k in ("cam_peak_on", "cam_peak_on_per_class") if k in loc},
            "classes": list(splits["val"].class_names),
            "classifier_images": len(data.get("classifier_train", data["train"])), "classifier_s": round(train_s, 1)}


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several result files as one: their steps in order of first appearance, their rows (a (recipe, arm, seed)
    in two files must have scored the same: each probe is deterministic per machine), their seconds summed."""
    if len({(r["preset"], r["rho"], r["environment"]["cpu_model"]) for r in results}) > 1:
        raise SystemExit("--markdown: the files differ in preset, rho or machine; tabulate them apart")
    out = {**results[0], "ladder": [], "rows": [], "wall_s": sum(r["wall_s"] for r in results)}
    seen: dict[tuple[str, str, int], float] = {}
    for res in results:
        out["ladder"] += [s for s in res["ladder"] if s["name"] not in {t["name"] for t in out["ladder"]}]
        for row in res["rows"]:
            key = (row["recipe"], row["arm"], row["seed"])
            if key in seen:
                if seen[key] != row["val_seed_miou"]:
                    raise SystemExit(f"--markdown: {key} scored {seen[key]} and {row['val_seed_miou']} in two files")
                continue
            seen[key] = row["val_seed_miou"]
            out["rows"].append(row)
    return out


def reference_step(result: dict[str, Any]) -> str:
    """The step the paired differences are taken against by default: the last step of the result's ladder that is
    one of :data:`LADDER`'s and has rows (the preset the file was made with; files made before a step was added
    to the ladder end at an earlier one), else the ladder's last step."""
    ladder = {n for n, _ in LADDER}
    scored = {r["recipe"] for r in result["rows"]}
    named = [s["name"] for s in result["ladder"] if s["name"] in ladder and s["name"] in scored]
    return named[-1] if named else LADDER[-1][0]


def table(result: dict[str, Any], with_geometry: bool = True, reference: list[str] | None = None) -> str:
    """The markdown tables of a result: per recipe and arm, mean (± std over seeds) of every score and the val
    seed mIoU minus ``reference``'s (default :func:`reference_step`: the preset), paired by seed (several names:
    the first with a row for that arm and seed, for a preset scored under two names on two sets of seeds), the
    oracle minus the baseline paired by seed, then each class's share of CAM peaks on its object and how far
    below the object they fall."""
    from conta_kit.summary import markdown_table

    rows, peaks, boxes, offsets, places, gaps = [], [], [], [], [], []
    names = [r["name"] for r in result["ladder"]]
    refs = list(reference) if reference else [reference_step(result)]
    scored = {r["recipe"] for r in result["rows"]}
    missing = [n for n in refs if n not in scored]
    if missing:
        raise SystemExit(f"--reference: no rows of {missing[0]!r}; the steps scored: {sorted(scored)}")
    preset: dict[tuple[str, int], float] = {}
    for name in reversed(refs):  # the first name listed wins
        preset.update({(r["arm"], r["seed"]): r["val_seed_miou"] for r in result["rows"] if r["recipe"] == name})
    classes = result["rows"][0]["classes"] if result["rows"] else []
    for name in names:
        for arm in ("baseline", "oracle"):
            got = [r for r in result["rows"] if r["recipe"] == name and r["arm"] == arm]
            if not got:
                continue
            label = f"rho {got[0]['rho']:g}" if arm == "baseline" else f"oracle (rho {got[0]['train_rho']:.2g})"
            rows.append([name, label, str(len(got)), *(mean_std_cell([r.get(k) for r in got]) for k in (
                "val_seed_miou", "val_ceiling_miou", "share_of_ceiling", "cam_peak_on_object", "cam_peak_in_box",
                "cam_mass_in_object", "object_pixel_share")),
                mean_std_cell([r["val_seed_miou"] - preset[arm, r["seed"]] for r in got if (arm, r["seed"]) in preset])
                if name not in refs else "—", f"{sum(r['classifier_s'] for r in got) / len(got):.0f}"])
            per = [[r["cam_peak_on_object_per_class"][k] for r in got] for k in range(len(classes))]
            peaks.append([name, label, *(mean_std_cell(v) for v in per)])
            if all("cam_peak_in_box_per_class" in r for r in got):  # files made before the measure lack it
                per = [[r["cam_peak_in_box_per_class"][k] for r in got] for k in range(len(classes))]
                boxes.append([name, label, *(mean_std_cell(v) for v in per)])
            off = [[r["cam_peak_offset_y_per_class"][k] for r in got] for k in range(len(classes))]
            offsets.append([name, label, *(mean_std_cell(v) for v in off)])
            if all("cam_peak_on_per_class" in r for r in got):  # files made before the measure lack it
                for place in got[0]["cam_peak_on_per_class"]:
                    if place == "own object":  # the table above
                        continue
                    per = [[r["cam_peak_on_per_class"][place][k] for r in got] for k in range(len(classes))]
                    places.append([name, label, place, *(mean_std_cell(v) for v in per)])
        gaps += oracle_minus_baseline(name, [r for r in result["rows"] if r["recipe"] == name])
    env = result["environment"]
    geo = markdown_table(["layout", "rho", "bits in the context's kind", "bits in its kind and extent"],
                         [[g["layout"], f"{g['rho']:g}", f"{g['kind_bits']:.3f}", f"{g['kind_and_extent_bits']:.3f}"]
                          for g in result.get("geometry", [])])
    head = ["recipe", "classifier trained at", "seeds", "val seed mIoU", "val ceiling", "share of ceiling",
            "CAM peak on object", "CAM peak in object's box", "CAM mass in object", "object pixel share",
            f"val seed mIoU minus {' / '.join(refs)}'s, paired by seed", "classifier s"]
    gap_head = ["recipe", "seeds", "val seed mIoU", "seeds the oracle is higher on", "CAM peak on object",
                "CAM mass in object"]
    text = (markdown_table(head, rows)
            + ("\nThe oracle minus the baseline, paired by seed (mean ± std over seeds):\n\n"
               + markdown_table(gap_head, gaps) if gaps else "")
            + "\nShare of CAM peaks on the object, per class:\n\n"
            + markdown_table(["recipe", "classifier trained at", *classes], peaks)
            + ("\nShare of CAM peaks in the object's box (the pointing game, no tolerance), per class:\n\n"
               + markdown_table(["recipe", "classifier trained at", *classes], boxes) if boxes else "")
            + ("\nWhat the CAM peaks that miss their object lie on, per class (shares of all peaks; with the "
               "share on the object above they sum to 1):\n\n"
               + markdown_table(["recipe", "classifier trained at", "peak on", *classes], places) if places else "")
            + "\nHow far below its object's mean row the CAM peaks, per class (fraction of the image height; "
              "negative: above):\n\n" + markdown_table(["recipe", "classifier trained at", *classes], offsets)
            + f"\nMachine: {env['cpu_model']}, one thread per job; {result['wall_s']:.0f} s in all.\n")
    if not with_geometry:
        return text
    return (text + "\nWhat a context's geometry tells about the class (mutual information with the class, 1,500 "
            "images at 32 px; at rho 0.1 the context is drawn at chance, as for the oracle):\n\n" + geo)


def oracle_minus_baseline(name: str, rows: list[dict[str, Any]]) -> list[list[str]]:
    """One table row (or none, where no seed has both arms): the oracle's scores minus the baseline's, paired by
    seed, and on how many seeds the oracle's val seed mIoU is the higher."""
    arms = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({s for a, s in arms if a == "baseline" and ("oracle", s) in arms})
    if not seeds:
        return []

    def diff(key: str) -> list[float | None]:
        pairs = [(arms["oracle", s].get(key), arms["baseline", s].get(key)) for s in seeds]
        return [None if o is None or b is None else o - b for o, b in pairs]

    seed_miou = diff("val_seed_miou")
    higher = sum(d > 0 for d in seed_miou if d is not None)
    return [[name, str(len(seeds)), mean_std_cell(seed_miou), f"{higher} of {len(seeds)}",
             mean_std_cell(diff("cam_peak_on_object")), mean_std_cell(diff("cam_mass_in_object"))]]


def geometry(rho: float, num_images: int = 1500) -> list[dict[str, Any]]:
    """What a context's geometry tells about the class (bits; :func:`~conta_kit.data.stats.patch_shape_information`)
    in each layout of the ladder and the class-shaped one, at ``rho`` and at chance (the oracle's data); the
    generator's own object sizes (``object_scale`` 1.0), at 32 px."""
    from conta_kit.data import ConfoundedScenes
    from conta_kit.data.stats import patch_shape_information

    out = []
    for layout in ("prior_class_surround", "prior", "prior_strip"):
        for r in (rho, 0.1):
            info = patch_shape_information(ConfoundedScenes("train", num_images=num_images, image_size=32,
                                                            cooccurrence=r, layout=layout))
            out.append({"layout": layout, "rho": r, "kind_bits": info["mutual_information_bits"],
                        "kind_and_extent_bits": info["extent_information_bits"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--preset", default="default", help="the preset the ladder's overrides apply to (default: default)")
    ap.add_argument("--rho", type=float, default=0.5, help="the baseline's confounding (default 0.5)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time, one thread each (default 2)")
    ap.add_argument("--only", nargs="+", default=None, help="recipe names to run (default: the whole ladder)")
    ap.add_argument("--also", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                    help="one more step beyond the preset: these flat overrides added to its recipe (repeatable; "
                         "e.g. --also aug_shift=30)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--markdown", nargs="+", default=None, metavar="JSON",
                    help="print the tables of one or more result files (merged) instead")
    ap.add_argument("--update", default=None, help="with --markdown: rewrite this file's --block")
    ap.add_argument("--block", default="recipe-health", help="with --update: the block's name (default recipe-health)")
    ap.add_argument("--no-geometry", action="store_true", help="with --markdown: leave out the context geometry table")
    ap.add_argument("--reference", nargs="+", default=None, metavar="STEP",
                    help="with --markdown: the step the paired differences are taken against (default: the last "
                         "step of the ladder that has rows, the preset the file was made with); several: per arm "
                         "and seed the first that has a row (one recipe scored under two names)")
    args = ap.parse_args()
    if args.markdown:
        from pathlib import Path

        from conta_kit.report.markdown import update_block

        missing = [p for p in args.markdown if not Path(p).is_file()]
        if missing:
            raise SystemExit(f"--markdown: {', '.join(missing)} not found")
        if args.update and not Path(args.update).is_file():
            raise SystemExit(f"--update: {args.update} not found")
        text = table(merge([json.loads(Path(p).read_text()) for p in args.markdown]), not args.no_geometry,
                     args.reference)
        if args.update:
            update_block(args.update, args.block, text)
        print(text)
        return
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.preset not in ("smoke", "default", "bench", "gpu"):
        raise SystemExit(f"--preset must be one of smoke, default, bench, gpu; got {args.preset!r}")
    from conta_kit.config import RunCfg

    also = []
    for group in args.also:
        pairs = [kv.split("=", 1) for kv in group]
        if any(len(p) != 2 or not p[0] for p in pairs):
            raise SystemExit(f"--also takes KEY=VALUE overrides, got {' '.join(group)!r}")
        extra = overrides_from(pairs)
        also.append(("+" + ",".join(f"{k}={v}" for k, v in dict(pairs).items()), extra))  # named as typed
    steps = recipes(args.preset, tuple(also))
    for group, (_, params) in zip(args.also, steps[len(steps) - len(also):]):
        try:
            RunCfg.from_params(args.preset, **params)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--also {' '.join(group)}: {e}") from None
    names = [n for n, _ in steps]
    if (args.update or args.reference) and not args.markdown:
        raise SystemExit(f"{'--update' if args.update else '--reference'} needs --markdown RESULT.json")
    if not 0.0 <= args.rho <= 1.0:
        raise SystemExit(f"--rho must be in [0, 1], got {args.rho}")
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        raise SystemExit(f"--only: unknown recipe(s) {unknown}; known: {names}")
    jobs = [(name, params, arm, seed, args.rho, args.preset) for name, params in steps
            if not args.only or name in args.only for seed in args.seeds for arm in ("baseline", "oracle")]
    import torch

    env = environment(torch.device("cpu"))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = []
        for row in pool.imap(probe, jobs):
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("recipe", "arm", "seed", "val_seed_miou", "share_of_ceiling",
                                                    "cam_peak_on_object")}), flush=True)
    emit({"benchmark": "recipe_health", "environment": env, "geometry": geometry(args.rho), "preset": args.preset,
          "rho": args.rho, "seeds": args.seeds,
          "ladder": [{"name": n, "params": p} for n, p in steps], "rows": rows,
          "wall_s": round(time.perf_counter() - t0, 1)}, args.out)


if __name__ == "__main__":
    main()
