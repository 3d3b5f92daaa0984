"""Run every benchmark with its default sizes and keep the JSON; or print the tables of kept results.

    .venv/bin/python benchmarks/run_all.py                 # writes benchmarks/results/<cpu|gpu>_<name>.json
    .venv/bin/python benchmarks/run_all.py --only cam      # one of them
    .venv/bin/python benchmarks/run_all.py --markdown      # the tables of docs/speed.md, from those files
    .venv/bin/python benchmarks/run_all.py --summary --update README.md   # the README's compact table
    .venv/bin/python benchmarks/run_all.py --markdown --update docs/speed.md   # the full tables there

Each benchmark runs in its own process with ``OMP_NUM_THREADS=1`` and writes its JSON itself (``--out``);
the tables print the values exactly as the JSON files hold them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = {  # name: (script, arguments)
    "cam": ("bench_cam.py", []),
    "cam_small": ("bench_cam.py", ["--size", "64", "--scales", "1.0", "0.5"]),  # the kit's CPU presets
    "train": ("bench_train.py", []),
    "masks": ("bench_masks.py", []),
}
GPU_RUNS = {  # IRNet-sized models, on a GPU only
    "cam_resnet50": ("bench_cam.py", ["--backbone", "resnet50", "--size", "320", "--images", "64"]),
    "train_resnet50": ("bench_train.py", ["--classifier", "resnet50", "--segmenter", "deeplabv3_resnet50",
                                          "--size", "320", "--batch", "16", "--images", "256"]),
}


def run(names: list[str], prefix: str) -> None:
    runs = {**RUNS, **(GPU_RUNS if prefix == "gpu" else {})}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in names or list(runs):
        if name not in runs:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {sorted(runs)}")
        script, args = runs[name]
        out = RESULTS / f"{prefix}_{name}.json"
        print(f"== {name}: {script} {' '.join(args)} -> {out}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(HERE / script), *args, "--out", str(out)], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def _cell(entry: dict, key: str) -> str:
    if "skipped" in entry:
        return "skipped"
    value = entry.get(key, "")
    return "n/a" if value is None else str(value)


def markdown(prefix: str) -> str:
    lines = []
    for path in sorted(RESULTS.glob(f"{prefix}_*.json")):
        d = json.loads(path.read_text())
        lines += [f"`{path.relative_to(HERE.parent)}` ({d['device']}, {d['device_name']}, torch {d['torch']}, "
                  f"{d['threads']} thread(s))", ""]
        if d["benchmark"] == "cam_inference":
            lines += [f"{d['backbone']}, {d['classes']} classes, {d['images']} images of {d['image_size']} px, "
                      f"batch {d['batch']}, scales {d['scales']} with flips, best of {d['repeats']}", "",
                      "| case | images/s | ratio vs reference | max abs diff high_res | max abs diff strided |",
                      "|---|---|---|---|---|",
                      f"| reference (IRNet protocol, per image) | {d['reference']['images_per_s']} | 1 | | |"]
            for case in ("kit", "kit_fast", "kit_amp_channels_last", "kit_cpu_bf16"):
                if case not in d:
                    continue
                e = d[case]
                lines.append(f"| {case} | {_cell(e, 'images_per_s')} | {_cell(e, 'ratio_vs_reference')} | "
                             f"{_cell(e, 'max_abs_diff_high_res')} | {_cell(e, 'max_abs_diff_strided')} |")
            lines += ["", f"Best ratio {d['best_ratio_vs_reference']}, target {d['target_ratio']}: meets_target "
                      f"{d['meets_target']}; fp32 within 1e-4: kit {d['kit']['fp32_within_1e-4']}, kit_fast "
                      f"{d['kit_fast']['fp32_within_1e-4']}; fold_batchnorm {d['fold_s']} s."]
        elif d["benchmark"] == "training_throughput":
            lines += [f"{d['images']} images of {d['image_size']} px, batch {d['batch']}, best of {d['repeats']}", "",
                      "| model | case | images/s | speedup vs fp32 | peak CUDA memory (MiB) |", "|---|---|---|---|---|"]
            for name in ("classifier", "segmenter"):
                for case in ("fp32", "channels_last", "amp_channels_last", "compile"):
                    e = d[name][case]
                    speedup = "1" if case == "fp32" else _cell(e, "speedup_vs_fp32")
                    lines.append(f"| {name} ({d[name]['model']}) | {case} | {_cell(e, 'images_per_s')} | {speedup} | "
                                 f"{_cell(e, 'peak_memory_mib')} |")
            lines += ["", "| data pipeline | value |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in d["data_pipeline"].items()]
        elif d["benchmark"] == "masks_confounders_metrics":
            lines += [f"{d['classes']} classes, {d['mask_size']} px masks in chunks of {d['chunk']}", "",
                      "| case | masks | seconds | peak RSS increase (MiB) |", "|---|---|---|---|"]
            for case in ("generate", "confounder_set", "metrics"):
                for n, e in d[case].items():
                    if isinstance(e, dict):
                        lines.append(f"| {case} | {n} | {e['seconds']} | {e['peak_rss_increase_mib']} |")
        lines.append("")
    return "\n".join(lines)


def summary(prefix: str) -> str:
    """A compact table of the kept results (for the README's ``speed`` block)."""
    def load(name: str) -> dict | None:
        path = RESULTS / f"{prefix}_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    rows = []
    for name in ("cam", "cam_small", "cam_resnet50"):
        d = load(name)
        if d is None:
            continue
        what = f"CAM inference, {d['backbone']}, {d['image_size']} px, scales {d['scales']} + flips"
        ref = d["reference"]["images_per_s"]
        for case in ("kit", "kit_fast", "kit_amp_channels_last", "kit_cpu_bf16"):
            e = d.get(case, {})
            if "images_per_s" in e:
                diff = max(e["max_abs_diff_high_res"], e["max_abs_diff_strided"])
                rows.append(f"| {what} | {case} vs IRNet-protocol reference ({ref} img/s) | "
                            f"{e['ratio_vs_reference']}x ({e['images_per_s']} img/s), max abs diff {diff:.1e} |")
        rows.append(f"| {what} | target {d['target_ratio']}x on the paths that agree with the reference | "
                    f"{'met' if d['meets_target'] else 'not met'} (best {d['best_ratio_vs_reference']}x) |")
    for name in ("train", "train_resnet50"):
        d = load(name)
        if d is None:
            continue
        for model in ("classifier", "segmenter"):
            for case in ("channels_last", "amp_channels_last", "compile"):
                e = d[model][case]
                if "speedup_vs_fp32" in e:
                    mem = f", peak {e['peak_memory_mib']} MiB" if e.get("peak_memory_mib") else ""
                    rows.append(f"| training, {d[model]['model']} {model}, {d['image_size']} px | {case} vs fp32 | "
                                f"{e['speedup_vs_fp32']}x ({e['images_per_s']} img/s{mem}) |")
        dp = d["data_pipeline"]
        rows.append(f"| data pipeline | generator items/s over classifier training images/s | "
                    f"{dp['generator_vs_classifier_train']}x ({dp['generator_items_per_s']} items/s) |")
    d = load("masks")
    if d is not None:
        for case in ("confounder_set", "metrics"):
            for n, e in d[case].items():
                if isinstance(e, dict) and n == max(k for k, v in d[case].items() if isinstance(v, dict)):
                    rows.append(f"| {case.replace('_', ' ')} over {n} masks of {d['mask_size']} px | time, peak "
                                f"memory increase | {e['seconds']} s, {e['peak_rss_increase_mib']} MiB |")
    env = next((x for x in (load(n) for n in RUNS) if x), None)
    head = (f"`benchmarks/results/{prefix}_*.json` ({env['device']}, {env['device_name']}, torch {env['torch']}, "
            f"{env['threads']} thread(s)); full tables in docs/speed.md\n\n" if env else "")
    return head + "| what | case | result |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=[], help="benchmark names (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the tables of the kept results instead")
    p.add_argument("--prefix", default=None, help="cpu or gpu (default: gpu when CUDA is available)")
    p.add_argument("--summary", action="store_true", help="print the compact table instead")
    p.add_argument("--update", metavar="FILE", help="write the table(s) into FILE's block "
                   "<!-- results:speed-<prefix> --> (--summary) or <!-- results:speed-tables-<prefix> --> (--markdown)")
    a = p.parse_args()
    prefix = a.prefix or ("gpu" if torch.cuda.is_available() else "cpu")
    if a.summary:
        text = summary(prefix)
        if a.update:
            from conta_kit.report.markdown import update_block

            update_block(a.update, f"speed-{prefix}", text)
        print(text)
    elif a.markdown:
        text = markdown(prefix)
        if a.update:
            from conta_kit.report.markdown import update_block

            update_block(a.update, f"speed-tables-{prefix}", text)
        print(text)
    else:
        run(a.only, prefix)


if __name__ == "__main__":
    main()
