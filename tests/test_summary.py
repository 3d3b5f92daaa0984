"""One rule for numbers over seeds: mean ± std, its 95 % interval, and how every table prints them."""

import json
import math

import pytest

from conta_kit.summary import METRICS, fmt, markdown_table, mean_std, metric_value, nanmean, summarize


def test_mean_std_and_confidence_interval():
    s = mean_std([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["values"] == [1.0, 2.0, 3.0]
    assert s["ci95"] == pytest.approx(4.303 / math.sqrt(3))  # t(0.975, df=2)
    one = mean_std([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci95"])
    assert mean_std([1.0] * 40)["ci95"] == 0.0
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_one_formatting_rule_for_every_table():
    assert fmt(mean_std([0.2, 0.3])) == "0.250 ± 0.071"
    assert fmt(mean_std([0.25])) == "0.250"  # one seed: no spread to show
    assert fmt(json.loads(json.dumps(mean_std([0.25])).replace("NaN", "null"))) == "0.250"  # as read back from JSON
    assert fmt(mean_std([0.001, 0.003])) == "2.0e-03 ± 1.4e-03"  # small diagnostics keep their digits
    assert fmt(None) == "—" and fmt({}) == "—"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"


def test_summary_reads_every_named_metric_and_skips_nan():
    rounds = {0: [{"seed": {"miou_fixed": 0.2}, "pseudo": {"miou": float("nan")}}],
              1: [{"seed": {"miou_fixed": 0.4}, "pseudo": {"miou": 0.5}}]}
    s = summarize(rounds)
    row = s["rounds"][0]
    assert s["seeds"] == [0, 1] and row["seed_miou_fixed"]["mean"] == pytest.approx(0.3)
    assert row["pseudo_miou"]["values"] == [0.5]  # the NaN seed left out
    assert "seg_miou" not in row
    assert metric_value({"m": {"attention": {"entropy": 0.9}}}, "attention_entropy") == 0.9
    assert metric_value({"seed": {"miou_fixed": True}}, "seed_miou_fixed") is None
    assert set(METRICS) >= {"seed_miou_fixed", "pseudo_miou", "seg_miou", "cam_leakage"}
    assert math.isnan(nanmean([None, float("nan")])) and nanmean([1.0, None, 3.0]) == 2.0


def test_fmt_ci_adds_the_interval_of_the_mean():
    from conta_kit.summary import fmt_ci

    # 4.303 * 0.1 / sqrt(3) = 0.248
    assert fmt_ci(mean_std([0.1, 0.2, 0.3])) == "0.200 ± 0.100 [-0.05, +0.45]"
    assert fmt_ci(mean_std([0.1])) == "0.100" and fmt_ci(None) == "—"
