"""`stabench validate`: the pre-registered design's structure (--fast: not its verdicts, which need the full
regimes), the exact tests each check reports, and the readouts it reads off records."""

import json
import math

import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.records.stats import PairedDelta
from stabench.validate import CHECKS, Verdict
from stabench.validate.checks import ARMS, NEGATIVE_CONTROLS, arm, arm_config, jobs
from stabench.validate.readout import Result, readout, verdict


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    args = ["validate", "--fast", "--n-pairs", "1", "--workers", "1", "--store", str(tmp / "store"), "--out", str(tmp)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp / "validation.json").read_text())
    again = CliRunner().invoke(main, args)  # every record exists: nothing is trained again
    assert again.exit_code == 0, again.output
    return tmp, first.output, summary, json.loads((tmp / "validation.json").read_text())


def test_the_control_table_has_every_check_with_its_exact_test(fast_run):
    _, output, summary, _ = fast_run
    rows = summary["checks"]
    assert [r["claim"] for r in rows] == [c.claim for c in CHECKS]
    assert {r["verdict"] for r in rows} <= set(Verdict)
    assert all(r["n"] + r["excluded"] == 1 for r in rows)  # a diverged tiny run is excluded, and counted
    assert "exact test" in output


def test_positive_controls_carry_an_exact_p(fast_run):
    rows = [r for r in fast_run[2]["checks"] if r["kind"] == "positive control"]
    assert [r["test"] for r in rows] == ["mcnemar", "sign-flip"]
    assert rows[0]["discordant"] is not None
    assert all("p" in r and "p_holm" in r for r in rows)


def test_ls_rows_come_from_learnable_records(fast_run):
    tmp, _, summary, _ = fast_run
    ls = next(r for r in summary["checks"] if r["paper_ratio"] == "LS")
    assert ls["treatment"] == "ls"
    records = [json.loads(p.read_text()) for p in (tmp / "store").glob("*/record.json")]
    ls_records = [r for r in records if r["tags"]["baseline_point"] == "ls"]
    assert ls_records
    assert all(r["config"]["lsc"]["mode"] == "learnable" for r in ls_records)


def test_negative_controls_report_a_rate_outside_holm(fast_run):
    _, _, summary, _ = fast_run
    negatives = summary["negative_controls"]
    assert [(n["regime"], n["arm"]) for n in negatives] == [(r, a) for r, a, _ in NEGATIVE_CONTROLS]
    assert all(0.0 <= n["rate"] <= 1.0 for n in negatives)
    assert all(r["kind"] != "negative control" for r in summary["checks"])


def test_a_second_run_trains_nothing(fast_run):
    assert fast_run[3]["train_s_this_run"] < 1.0


def test_the_report_sets_scalelong_beside_ours(fast_run):
    readme = (fast_run[0] / "README.md").read_text()
    assert "ScaleLong depth 16" in readme
    assert "false-positive rate" in readme


def test_the_design_runs_the_negative_controls_arm_on_twice_the_seeds():
    by_arm = {}
    for job in jobs(4, fast=True):
        by_arm.setdefault((job.sweep, job.name), []).append(job.config.seed)
    assert len(by_arm[("validation-collapse", "none")]) == 8
    assert len(by_arm[("validation-collapse", "warmup-20")]) == 4
    assert len(by_arm[("validation-clip", "clip-1")]) == 4


def test_the_arms_differ_from_their_control_only_in_their_knob():
    none, ls = arm_config(arm("scalelong", "none"), 100, False), arm_config(arm("scalelong", "ls"), 100, False)
    assert ls.lsc.mode == "learnable"
    assert ls.model_copy(update={"lsc": none.lsc}) == none
    assert len({(a.regime, a.name) for a in ARMS}) == len(ARMS)


def record(status="ok", **metrics):
    return {"status": status, "metrics": metrics, "probes": {"decoder_norm": [1.0, math.e]},
            "evals": [{"fid_digits": {"raw": 3.0, "ema_0.99": 2.0}}]}  # fmt: skip


def test_readouts():
    assert readout(record(collapsed=1.0), "failed") == 1.0
    assert readout(record("diverged"), "failed") == 1.0
    assert readout(record(collapsed=0.0), "failed") == 0.0
    assert readout(record(), "ln decoder_norm") == pytest.approx(1.0)
    assert readout(record(), "fid_digits@ema_0.99") == 2.0
    assert readout(record(final_probe_loss=math.e), "ln final_probe_loss") == pytest.approx(1.0)
    assert readout(record("diverged", final_probe_loss=1.0), "ln final_probe_loss") is None


def result(check, pairs, discordant=None, mean=-1.0):
    return Result(check, pairs, 0, 0.01, PairedDelta(mean, -2, -0.5, 0.01, len(pairs)), discordant, None)


def test_positive_controls_stand_outside_the_holm_family():
    assert [c.in_family for c in CHECKS if c.kind == "positive control"] == [False, False]
    assert all(c.in_family for c in CHECKS if c.kind != "positive control")


def test_verdicts_follow_the_holm_adjusted_exact_p():
    mcnemar, sign_flip = CHECKS[0], CHECKS[1]
    pairs = [(100, 1.0, 0.0)] * 8
    assert verdict(result(mcnemar, pairs, (8, 0)), 0.01) == Verdict.AGREES
    assert verdict(result(mcnemar, pairs, (0, 8)), 0.01) == Verdict.DISAGREES
    assert verdict(result(mcnemar, pairs, (8, 0)), 0.06) == Verdict.INCONCLUSIVE
    assert verdict(result(sign_flip, pairs), 0.01) == Verdict.AGREES
    assert verdict(result(sign_flip, pairs, mean=1.0), 0.01) == Verdict.DISAGREES
    assert verdict(result(sign_flip, []), math.nan) == Verdict.UNTESTED


@pytest.mark.parametrize("regime", ["collapse", "clip", "scalelong", "quality"])
def test_the_help_states_the_design_n_of_each_regime(regime):
    from stabench.validate.checks import N_PAIRS

    text = " ".join(CliRunner().invoke(main, ["validate", "--help"]).output.split()).lower()
    assert f"{regime} {N_PAIRS[regime]}" in text
