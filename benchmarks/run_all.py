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
    "cam_repeat": ("bench_cam.py", []),  # the same again: how much a share of the matmul rate moves run to run
    "cam_small": ("bench_cam.py", ["--size", "64", "--scales", "1.0", "0.5"]),  # the kit's CPU presets
    "train": ("bench_train.py", []),
    "masks": ("bench_masks.py", []),
    # bf16 judged on seeds (3 seeds), against the noise floor of an fp32 rerun on another thread count
    "amp": ("bench_amp.py", ["--preset", "bench", "--threads", "1", "--rerun-threads", "2"]),
    "threads": ("bench_threads.py", ["--preset", "bench"]),  # sets its own threads per way
}
GPU_RUNS = {  # IRNet-sized models, on a GPU only
    "cam_resnet50": ("bench_cam.py", ["--backbone", "resnet50", "--size", "320", "--images", "64"]),
    "train_resnet50": ("bench_train.py", ["--classifier", "resnet50", "--segmenter", "deeplabv3_resnet50",
                                          "--size", "320", "--batch", "16", "--images", "256"]),
}
# the benchmark kinds markdown() draws tables for (round0: bench_round.py, which gpu.sh runs with the gpu preset)
TABLED = ("cam_inference", "training_throughput", "masks_confounders_metrics", "cpu_bf16_round0", "threads_vs_jobs",
          "round0")


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


def _shown(path: Path) -> str:
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else path.name


def _cell(entry: dict, key: str) -> str:
    if "skipped" in entry:
        return "skipped"
    value = entry.get(key, "")
    return "n/a" if value is None else str(value)


def markdown(prefix: str) -> str:
    lines = []
    for path in sorted(RESULTS.glob(f"{prefix}_*.json")):
        d = json.loads(path.read_text())
        if d.get("benchmark") not in TABLED:
            continue  # e.g. cpu_wiring.json: bench_wiring.py's result, tabulated in docs/conta.md
        lines += [f"`{_shown(path)}` ({d['device']}, {d['device_name']}, torch {d['torch']}, "
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
            if "flops_per_image" in d:
                pk = d["matmul_peak_gflop_per_s"]
                lines += ["", f"Machine limit: {d['flops_per_image'] / 1e9:.3f} GFLOP per image (FlopCounterMode); "
                          f"measured matmul rate fp32 {pk['fp32']} GFLOP/s, bf16 {pk['bf16']} GFLOP/s.", "",
                          "| case | GFLOP/s | share of its matmul rate | share in each round |", "|---|---|---|---|",
                          f"| reference | | {d['reference']['share_of_matmul_peak']} | |"]
                for case in ("kit", "kit_fast", "kit_amp_channels_last", "kit_cpu_bf16"):
                    e = d.get(case, {})
                    if "gflop_per_s" in e:
                        lines.append(f"| {case} | {e['gflop_per_s']} | {e['share_of_matmul_peak']} | "
                                     f"{', '.join(str(x) for x in e.get('share_per_round', []))} |")
                spread = (f", rounds {d['share_rounds_min']}-{d['share_rounds_max']}"
                          if "share_rounds_min" in d else "")
                lines += ["", f"Target: {d['share_case']} at >= {d['target_share']} of the matmul rate in every round: "
                          f"{d['share']}{spread} ({'met' if d['meets_share_target'] else 'not met'}). Where kit_fast's "
                          "time goes (torch.profiler, self time):", "", "| operator | share | ms |", "|---|---|---|"]
                lines += [f"| {r['op']} | {r['share']} | {r['ms']} |" for r in d["profile_kit_fast"]]
                bs = d.get("bf16_share")
                if bs:
                    lines += ["", f"bf16 on this CPU: {bs['case']} at {bs['share']} of the bf16 matmul rate, rounds "
                              f"{bs['rounds_min']}-{bs['rounds_max']}; target {bs['target']} in every round: "
                              + (("met" if bs["met"] else "not met") if bs["judged"]
                                 else "not judged (no bf16 units: emulated)") + "."]
                if "profile_kit_cpu_bf16" in d:
                    lines += ["", "Where kit_cpu_bf16's time goes (torch.profiler, self time):", "",
                              "| operator | share | ms |", "|---|---|---|"]
                    lines += [f"| {r['op']} | {r['share']} | {r['ms']} |" for r in d["profile_kit_cpu_bf16"]]
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
        elif d["benchmark"] == "cpu_bf16_round0":
            lines += [f"Round 0, preset `{d['preset']}`, seeds {d['seeds']}, fp32 against bf16 training and CAMs; "
                      f"this CPU's bf16 units: {d['cpu_bf16_units']} (amp='auto' uses bf16: {d['auto_uses_bf16']})", "",
                      "| seed | agreement seeds | agreement pseudo-masks | inference-only seeds | "
                      "seed mIoU fp32 / bf16 | pseudo mIoU fp32 / bf16 | seg mIoU fp32 / bf16 | round s fp32 / bf16 |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in d["per_seed"]:
                f, b = r["fp32"], r["bf16"]
                lines.append(f"| {r['seed']} | {r['agreement']['seeds']:.4f} | {r['agreement']['pseudo_masks']:.4f} | "
                             f"{r['inference_only']['seeds']:.4f} | {f['miou_best']:.3f} / {b['miou_best']:.3f} | "
                             f"{f['pseudo_miou']:.3f} / {b['pseudo_miou']:.3f} | {f['seg_miou']:.3f} / "
                             f"{b['seg_miou']:.3f} | {f['seconds']['total_s']} / {b['seconds']['total_s']} |")
            lo = d["loss"]
            gap = [round(v, 4) for v in lo["max_abs_diff_per_epoch"]]
            noise = [round(v, 4) for v in lo["fp32_std_over_seeds_per_epoch"]]
            lines += ["", f"Classifier loss, largest |bf16 - fp32| per epoch {gap} against the fp32 spread over "
                      f"seeds {noise} "
                      f"(within twice the spread: {lo['within_noise']}); judgement {d['judgement']}."]
            if "fp32_rerun" in d:
                fr = d["fp32_rerun"]
                diffs = ", ".join(f"{k} {v['mean']:+.4f} ± {v['std']:.4f}" for k, v in fr["diff_minus_fp32"].items())
                lines += ["", f"Noise floor: fp32 rerun on {fr['threads']} thread(s) (float rounding the only change): "
                          f"seeds equal on {fr['agreement']['seeds']['mean']:.4f}, pseudo-masks on "
                          f"{fr['agreement']['pseudo_masks']['mean']:.4f} of the pixels; mIoU differences {diffs}."]
        elif d["benchmark"] == "threads_vs_jobs":
            lines += [f"Round 0 of seeds {d['seeds']}, preset `{d['preset']}`, {d['cpu_count']} cores", "",
                      "| way | jobs | wall s | seed mIoU per seed |", "|---|---|---|---|"]
            for way in ("intra_op", "parallel_jobs", "one_thread"):
                e = d[way]
                lines.append(f"| {way} | {e['jobs']} | {e['wall_s']} | {e['seed_miou_best']} |")
            lines += ["", f"jobs over threads {d['jobs_over_threads']}x; intra-op speed-up from 1 thread "
                      f"{d['intra_op_speedup']}x; results equal: {d['results_equal']}; better: {d['better']}."]
        elif d["benchmark"] == "round0":
            lines += [f"Round 0, preset `{d['preset']}` ({d['backbone']} / {d['segmenter']}, {d['image_size']} px, "
                      f"{d['num_train']} train images), amp {d['amp']} = {d['precision']}", "",
                      "| stage | seconds |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in d["timing_s"].items()]
            lines += ["", f"Classifier training {d['classifier_images_per_s']} images/s; scores "
                      + ", ".join(f"{k} {v:.3f}" for k, v in d["scores"].items()) + "."]
        lines.append("")
    return "\n".join(lines)


def summary(prefix: str) -> str:
    """A compact table of the kept results (for the README's ``speed`` block)."""
    def load(name: str) -> dict | None:
        path = RESULTS / f"{prefix}_{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    rows: list[str] = []
    machines: list[str] = []  # the machines the kept results come from, in first-seen order

    def mark(start: int, d: dict) -> None:
        """Append the machine column to the rows added since ``start`` (from ``d``'s environment)."""
        label = machine(d)
        if label not in machines:
            machines.append(label)
        tag = chr(ord("A") + machines.index(label))
        rows[start:] = [f"{r} {tag} |" for r in rows[start:]]

    for name in ("cam", "cam_repeat", "cam_small", "cam_resnet50"):
        d = load(name)
        if d is None:
            continue
        start = len(rows)
        what = f"CAM inference, {d['backbone']}, {d['image_size']} px, scales {d['scales']} + flips"
        ref = d["reference"]["images_per_s"]
        for case in ("kit", "kit_fast", "kit_amp_channels_last", "kit_cpu_bf16"):
            e = d.get(case, {})
            if "images_per_s" in e:
                diff = max(e["max_abs_diff_high_res"], e["max_abs_diff_strided"])
                kind = "bf16" if "bf16" in case or "amp" in case else "fp32"
                share = (f", {e['share_of_matmul_peak']:.0%} of the {kind} matmul rate"
                         if "share_of_matmul_peak" in e else "")
                rows.append(f"| {what} | {case} vs IRNet-protocol reference ({ref} img/s) | "
                            f"{e['ratio_vs_reference']}x ({e['images_per_s']} img/s{share}), max abs diff {diff:.1e} |")
        rows.append(f"| {what} | target {d['target_ratio']}x on the paths that agree with the reference | "
                    f"{'met' if d['meets_target'] else 'not met'} (best {d['best_ratio_vs_reference']}x) |")
        if "share" in d:
            kind = "bf16" if "amp" in d["share_case"] else "fp32"
            rows.append(f"| {what} | target: {d['share_case']} at >= {d['target_share']:.0%} of the measured {kind} "
                        f"matmul rate ({d['matmul_peak_gflop_per_s'][kind]} GFLOP/s) | "
                        f"{'met' if d['meets_share_target'] else 'not met'} ({d['share']:.0%}; convolution takes "
                        f"{d['profile_kit_fast'][0]['share']:.0%} of the time) |")
        bs = d.get("bf16_share")
        if bs and bs["judged"]:
            rows.append(f"| {what} | target: {bs['case']} at >= {bs['target']:.0%} of the measured bf16 matmul rate "
                        f"({d['matmul_peak_gflop_per_s']['bf16']} GFLOP/s), every round | "
                        f"{'met' if bs['met'] else 'not met'} ({bs['share']:.0%}, rounds {bs['rounds_min']:.0%}-"
                        f"{bs['rounds_max']:.0%}) |")
        mark(start, d)
    for name in ("train", "train_resnet50"):
        d = load(name)
        if d is None:
            continue
        start = len(rows)
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
        mark(start, d)
    d = load("amp")
    if d is not None:
        start = len(rows)
        ag, diffs = d["agreement"], d["diff_bf16_minus_fp32"]
        worst = max(abs(v["mean"]) for v in diffs.values())
        rows.append(f"| bf16 against fp32, round 0, preset `{d['preset']}`, {len(d['seeds'])} seeds (bf16 units "
                    f"here: {'yes' if any(d['cpu_bf16_units'].values()) else 'no'}) | seeds / pseudo-masks equal "
                    f"on (trained in bf16); seeds with bf16 CAMs only | {ag['seeds']['mean']:.4f} / "
                    f"{ag['pseudo_masks']['mean']:.4f}; {d['inference_only']['mean']:.4f} |")
        rows.append(f"| same | largest mean mIoU difference (seed, pseudo-mask, segmentation); round time fp32 / bf16 "
                    f"| {worst:.4f}; {d['speedup_fp32_over_bf16']['round']['mean']:.2f}x |")
        if "fp32_rerun" in d:
            fr = d["fp32_rerun"]
            worst_r = max(abs(v["mean"]) for v in fr["diff_minus_fp32"].values())
            rows.append(f"| same, the noise floor: fp32 rerun on {fr['threads']} thread(s), float rounding the only "
                        f"change | seeds / pseudo-masks equal on; largest mean mIoU difference | "
                        f"{fr['agreement']['seeds']['mean']:.4f} / {fr['agreement']['pseudo_masks']['mean']:.4f}; "
                        f"{worst_r:.4f} |")
        mark(start, d)
    d = load("threads")
    if d is not None:
        start = len(rows)
        rows.append(f"| both cores: round 0 of {len(d['seeds'])} seeds, preset `{d['preset']}` | parallel jobs "
                    f"(1 thread each) over intra-op threads | {d['jobs_over_threads']}x "
                    f"({d['parallel_jobs']['wall_s']} s vs "
                    f"{d['intra_op']['wall_s']} s; one job's speed-up from 1 to {d['cpu_count']} threads "
                    f"{d['intra_op_speedup']}x) |")
        mark(start, d)
    d = load("round0")
    if d is not None:
        start = len(rows)
        rows.append(f"| round 0, preset `{d['preset']}`, amp {d['precision']} | seconds by stage | "
                    + ", ".join(f"{k} {v}" for k, v in d["timing_s"].items()) + " |")
        mark(start, d)
    d = load("masks")
    if d is not None:
        start = len(rows)
        for case in ("confounder_set", "metrics"):
            for n, e in d[case].items():
                if isinstance(e, dict) and n == max(k for k, v in d[case].items() if isinstance(v, dict)):
                    rows.append(f"| {case.replace('_', ' ')} over {n} masks of {d['mask_size']} px | time, peak "
                                f"memory increase | {e['seconds']} s, {e['peak_rss_increase_mib']} MiB |")
        mark(start, d)
    env = next((x for x in (load(n) for n in RUNS) if x), None)
    where = "; ".join(f"{chr(ord('A') + i)}: {m}" for i, m in enumerate(machines))
    head = (f"`benchmarks/results/{prefix}_*.json` ({env['device']}, torch {env['torch']}); full tables in "
            f"docs/speed.md. Machines: {where}.\n\n" if env else "")
    return head + "| what | case | result | machine |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def machine(d: dict) -> str:
    """Which machine a result file comes from, as its environment recorded it (older files lack the CPU model)."""
    if d.get("device", "cpu").startswith("cuda"):
        return f"{d['device_name']}"
    model = d.get("cpu_model", f"{d.get('device_name')} CPU, model not recorded")
    if "cpu_bf16_units" not in d:
        return f"{d.get('cpu_count')}-core {model}, bf16 units not recorded"
    units = [k.upper().replace("_", "-") for k, v in d["cpu_bf16_units"].items() if v]
    return f"{d.get('cpu_count')}-core {model}, bf16 units: {', '.join(units) or 'none'}"


def main() -> None:
    global RESULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=[], help="benchmark names (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the tables of the kept results instead")
    p.add_argument("--prefix", default=None, help="cpu or gpu (default: gpu when CUDA is available)")
    p.add_argument("--summary", action="store_true", help="print the compact table instead")
    p.add_argument("--results", default=str(RESULTS), help="folder of the JSON files (default: benchmarks/results)")
    p.add_argument("--update", metavar="FILE", help="write the table(s) into FILE's block "
                   "<!-- results:speed-<prefix> --> (--summary) or <!-- results:speed-tables-<prefix> --> (--markdown)")
    a = p.parse_args()
    RESULTS = Path(a.results)
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
