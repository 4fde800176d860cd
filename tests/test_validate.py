"""`stabench validate --fast`: the control table's structure (not its verdicts, which need the full regime)."""

import json

from click.testing import CliRunner

from stabench.cli import main
from stabench.validate import CHECKS

VERDICTS = {"agrees", "disagrees", "inconclusive", "passes", "fails", "untested"}


def test_fast_validation_writes_the_control_table_and_resumes(tmp_path):
    args = ["validate", "--fast", "--n-seeds", "1", "--store", str(tmp_path / "store"), "--out", str(tmp_path)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "validation.json").read_text())
    rows = summary["checks"]
    assert len(rows) == len(CHECKS)
    assert {r["kind"] for r in rows} == {
        "positive control",
        "negative control",
        "ScaleLong direction",
        "published direction",
    }
    for row, check in zip(rows, CHECKS):
        assert row["verdict"] in VERDICTS, row
        assert row["n"] == check.seed_factor, row
    one_pair = [r for r, c in zip(rows, CHECKS) if c.seed_factor == 1]
    assert all(r["ci_lo"] is None for r in one_pair)  # one pair: no interval
    collapse = next(r for r in rows if r["metric"] == "collapsed")
    assert collapse["control_mean"] in (0.0, 0.5, 1.0)  # a share of 2 runs
    negative = [r for r in rows if r["kind"] == "negative control"]
    assert all(r["treatment"] == "the same config, other seeds" for r in negative)
    assert set(summary["decoder_norm_ratio_to_none"]) == {"CS", "LS"}
    readme = (tmp_path / "README.md").read_text()
    assert "| kind | claim | regime | metric | n |" in readme
    assert "ScaleLong depth 16" in readme
    assert "delta [95% CI]" in first.output

    again = CliRunner().invoke(main, args)  # every record exists: nothing is trained again
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "validation.json").read_text())["train_s_this_run"] == 0


def test_verdicts_follow_the_interval():
    from stabench.stats import PairedDelta
    from stabench.validate import Check, verdict

    lower = Check("published direction", "x lowers y", "stress", "instability", ())
    none = Check("negative control", "no difference", "stress", "instability", (), expect="none")
    assert verdict(lower, PairedDelta(-1.0, -2.0, -0.1, 0.01, 5)) == "agrees"
    assert verdict(lower, PairedDelta(1.0, 0.1, 2.0, 0.01, 5)) == "disagrees"
    assert verdict(lower, PairedDelta(-1.0, -2.0, 0.5, 0.2, 5)) == "inconclusive"
    assert verdict(none, PairedDelta(0.1, -0.5, 0.7, 0.6, 5)) == "passes"
    assert verdict(none, PairedDelta(1.0, 0.2, 1.8, 0.01, 5)) == "fails"
    assert verdict(lower, PairedDelta(-1.0, float("nan"), float("nan"), float("nan"), 1)) == "inconclusive"
