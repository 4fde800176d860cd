import copy
import dataclasses
import math
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import polars as pl
import pytest

from stabench.engine.telemetry import INSTABILITY_PARTS
from stabench.leaderboard import Row, build_leaderboard, numeric_table, pareto_front, write_leaderboard
from stabench.leaderboard.plots import MIN_IMPORTANCE_TRIALS, write_importance
from stabench.leaderboard.render import tex_number
from stabench.records.metrics import METRICS, Metric
from stabench.records.stats import Summary, tied_ranks

BASE_CONFIG = {"lsc": {"mode": "none", "kappa": 0.5}, "optim": {"lr": 0.001}}


def rec(
    config_hash, seed, fid, status="ok", evals=None, instability=0.1, baseline=None, mode="none", floor=None, **extra
):
    """A synthetic finished record; `extra` adds (or, as None, blanks) metrics."""
    metrics = {"fid_digits": fid, "instability": None if status == "diverged" else instability, **extra}
    if floor is not None:
        metrics["fid_digits_floor"] = floor
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["lsc"]["mode"] = mode
    return {
        "schema": 2,
        "run_id": f"{config_hash}-{seed}",
        "config_hash": config_hash,
        "seed": seed,
        "status": status,
        "config": cfg,
        "metrics": metrics,
        "tags": {"baseline": baseline} if baseline else {"sweep": "s", "trial_number": 0},
        "evals": evals or [],
        "curves": {"step": [1, 2], "loss": [1.0, 0.5], "grad_norm": [1.0, 1.0]},
        "probes": {"step": [0, 2], "feature_norm": [1.0, 1.1], "probe_loss": [1.0, 0.5]},
    }


def test_pareto_front_marks_non_dominated_points():
    assert pareto_front([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (3.0, 3.0), (math.inf, 0.0)]) == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_pareto_front_of_a_maximised_quality():
    # higher quality is better: (3, 1) dominates (1, 3) and (2, 2); (0.5, 0.5) is the steadiest finite point
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (0.5, 0.5), (-math.inf, 0.0)]
    assert pareto_front(points, "maximize") == [False, False, True, True, False]


def test_diverged_seeds_rank_last_and_are_counted():
    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant") for s in range(3)]
    # "lucky" has the best finite FIDs but one diverged seed: it must rank below every config without one
    records += [
        rec("lucky", 0, 1.0, mode="learnable"),
        rec("lucky", 1, 1.0, mode="learnable"),
        rec("lucky", 2, 0.0, status="diverged", mode="learnable"),
    ]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    by_hash = {r.config_hash: r for r in lb.rows}
    assert [r.config_hash for r in lb.rows] == ["good", "base", "lucky"]
    assert by_hash["lucky"].n == 3
    assert by_hash["lucky"].diverged == 1
    assert by_hash["lucky"].quality.mean == math.inf
    assert by_hash["lucky"].quality.median == 1.0  # the median keeps two of three seeds' word
    assert by_hash["lucky"].instability.mean == math.inf
    # paired delta on shared seeds: (5-10 + 6-11 + 7-12) / 3 = -5
    assert by_hash["good"].delta.mean == pytest.approx(-5.0)
    assert by_hash["good"].delta.n == 3
    assert by_hash["good"].knobs == "lsc.mode=constant"


def test_rows_are_typed_and_frozen():
    lb = build_leaderboard([rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)], "fid_digits", "ddpm")
    (row,) = lb.rows
    assert isinstance(row, Row)
    assert isinstance(row.quality, Summary) and isinstance(row.instability, Summary)
    assert (row.config, row.seeds, row.n, row.rank, row.quality.mean) == ("ddpm", (0, 1, 2), 3, 1, 11.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.rank = 2


@pytest.fixture
def accuracy(monkeypatch):
    """A registered metric where higher is better (no built-in one is)."""
    higher = Metric("accuracy", "maximize", "scoring", unit="", doc="a test metric", eval_key="accuracy", quality=True)
    monkeypatch.setitem(METRICS, "accuracy", higher)
    return "accuracy"


def acc_rec(config_hash, seed, acc, status="ok", evals=None, baseline=None, mode="none", instability=0.1):
    return rec(config_hash, seed, None, status, evals, instability, baseline, mode, accuracy=acc)


def test_a_maximised_metric_ranks_descending_in_every_part(accuracy, tmp_path):
    def evals(values):
        return [{"step": st, "accuracy": {"raw": v}} for st, v in zip((100, 200, 300), values)]

    records = [acc_rec("base", s, 0.5 + 0.01 * s, evals=evals([0.2, 0.4, 0.5]), baseline="b") for s in range(3)]
    records += [acc_rec("high", s, 0.9 + 0.02 * s, evals=evals([0.3, 0.7, 0.9]), mode="constant", instability=0.2)
                for s in range(3)]  # fmt: skip
    records += [acc_rec("low", s, 0.1 + 0.03 * s, evals=evals([0.1, 0.1, 0.1]), mode="linear") for s in range(3)]
    records += [acc_rec("crash", 0, 0.99, mode="learnable"), acc_rec("crash", 1, None, "diverged", mode="learnable")]
    lb = build_leaderboard(records, accuracy, baseline="b")
    rows = {r.config_hash: r for r in lb.rows}
    assert lb.direction == "maximize"
    assert [r.config_hash for r in lb.rows] == ["high", "base", "low", "crash"]
    assert rows["crash"].quality.mean == -math.inf  # a diverged seed is the worst value: -inf here
    assert [rows[h].pareto for h in ("high", "base", "low")] == [True, True, False]
    assert lb.target == pytest.approx(0.5)  # the baseline's worst seed: its smallest accuracy
    assert rows["base"].steps_to_target == 300
    assert rows["high"].steps_to_target == pytest.approx(200 - 100 * 0.2 / 0.4)  # 0.3 -> 0.7 crosses 0.5 at 150
    assert rows["high"].speedup == pytest.approx(2.0)
    assert rows["low"].steps_to_target == math.inf
    assert rows["high"].delta.mean == pytest.approx(0.41)
    assert rows["high"].rank == 1 and rows["base"].rank == 2
    write_leaderboard(records, tmp_path, accuracy, baseline="b", plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "(higher is better)" in md and "(positive is better)" in md and "its smallest" in md


def test_speedup_vs_baseline_from_eval_curves():
    curve_base = [(100, 20.0), (200, 12.0), (300, 11.0)]
    curve_fast = [(100, 15.0), (200, 10.0), (300, 9.0)]
    records = [
        rec("base", s, 11.0, evals=[{"step": st, "fid_digits": {"raw": v}} for st, v in curve_base], baseline="ddpm")
        for s in range(3)
    ]
    records += [
        rec(
            "fast",
            s,
            9.0,
            evals=[{"step": st, "fid_digits": {"raw": v, "ema_0.99": v + 1}} for st, v in curve_fast],
            mode="constant",
            best_weights="raw",
            best_weights_by="train-fid",
        )
        for s in range(3)
    ]
    records += [
        rec("never", s, 30.0, evals=[{"step": 300, "fid_digits": {"raw": 30.0}}], mode="inv_sqrt2") for s in range(3)
    ]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    rows = {r.config_hash: r for r in lb.rows}
    assert lb.target == 11.0  # the baseline's worst seed's final FID: every baseline seed reaches it
    assert lb.steps_note is None
    assert rows["base"].steps_to_target == 300
    assert rows["fast"].steps_to_target == pytest.approx(180.0)  # 15 at 100, 10 at 200: 11 at 180
    assert rows["fast"].speedup == pytest.approx(300 / 180)
    assert rows["never"].steps_to_target == math.inf
    assert rows["never"].speedup == 0.0


def test_steps_to_target_follows_the_weight_set_the_trial_chose_on_training_fid():
    base_evals = [{"step": st, "fid_digits": {"raw": v}} for st, v in ((100, 20.0), (200, 12.0), (300, 11.0))]
    base = [rec("base", s, 11.0, evals=base_evals, baseline="ddpm") for s in range(3)]
    # the trial chose ema on training FID; raw has the lower test FID at 100 and 200, which must not be picked
    chosen = [(100, 15.0, 12.0), (200, 10.0, 9.5), (300, 9.0, 9.5)]
    evals = [{"step": st, "fid_digits": {"ema_0.99": ema, "raw": raw}} for st, ema, raw in chosen]
    fast = [rec("fast", s, 9.0, evals=evals, mode="constant", best_weights="ema_0.99", best_weights_by="train-fid")
            for s in range(3)]  # fmt: skip
    lb = build_leaderboard(base + fast, "fid_digits", baseline="ddpm")
    row = next(r for r in lb.rows if r.config_hash == "fast")
    assert row.steps_to_target == pytest.approx(180.0)  # on ema: 15 -> 10 crosses 11 at 180 (raw's 12 -> 9.5: 140)


def test_steps_to_target_needs_three_evaluation_points(tmp_path):
    def evals(values):
        return [{"step": st, "fid_digits": {"raw": v}} for st, v in zip((100, 200), values)]

    records = [rec("base", s, 11.0, evals=evals([20.0, 11.0]), baseline="ddpm") for s in range(3)]
    records += [rec("fast", s, 9.0, evals=evals([10.0, 9.0]), mode="constant") for s in range(3)]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    assert lb.steps_note == "steps-to-target needs >= 3 evaluation points; these records have 2"
    assert all(r.steps_to_target is None and r.speedup is None for r in lb.rows)
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Steps to target and speedup: – (steps-to-target needs >= 3 evaluation points; these records have 2)" in md
    assert pl.read_csv(tmp_path / "leaderboard.csv")["steps_to_target"].to_list() == [None, None]


def test_holm_marks_only_deltas_that_survive_the_correction(tmp_path):
    base = [10.0, 11.0, 10.5, 10.2, 10.8]
    records = [rec("base", s, v, baseline="ddpm") for s, v in enumerate(base)]
    records += [rec("clear", s, v - 3.0 + 0.1 * (s % 2), mode="constant") for s, v in enumerate(base)]
    records += [rec("noise", s, v + (0.5 if s % 2 else -0.4), mode="linear") for s, v in enumerate(base)]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    rows = {r.config_hash: r for r in lb.rows}
    assert rows["clear"].significant
    assert not rows["noise"].significant
    assert rows["base"].significant is None  # no test against itself
    assert rows["clear"].delta.hi < 0
    assert not rows["clear"].small_n
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    header = (tmp_path / "leaderboard.md").read_text().split("\n| rank")[1].split("\n")[0]
    assert "95% t-CI" in header
    assert "fid_digits median" in header
    assert all(part in header for part in INSTABILITY_PARTS)


def test_ranks_tie_where_the_quality_intervals_overlap(tmp_path):
    records = [rec("a", s, 1.0 + 0.1 * s) for s in range(3)]  # [1.0, 1.2]
    records += [rec("b", s, 1.15 + 0.1 * s, mode="constant") for s in range(3)]  # overlaps a
    records += [rec("c", s, 5.0 + 0.1 * s, mode="linear") for s in range(3)]  # apart
    records += [rec("d", 0, 6.0, mode="learnable")]  # one seed: its point, clearly worse than a, b and c
    lb = build_leaderboard(records, "fid_digits")
    assert [(r.config_hash, r.rank) for r in lb.rows] == [("a", 1), ("b", 1), ("c", 3), ("d", 4)]
    write_leaderboard(records, tmp_path, "fid_digits", plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "lies entirely on the better side of this config's" in md
    assert pl.read_parquet(tmp_path / "leaderboard.parquet")["rank"].to_list() == [1, 1, 3, 4]


def test_kendall_tau_needs_four_seeds_and_five_configs(tmp_path):
    configs = [(h, float(v)) for v, h in enumerate("abcde", 1)]
    records = [rec(h, s, v + 0.01 * s) for h, v in configs for s in range(4)]
    assert build_leaderboard(records, "fid_digits").kendall_tau == pytest.approx(1.0)
    three_seeds = build_leaderboard([r for r in records if r["seed"] < 3], "fid_digits")
    assert three_seeds.kendall_tau is None
    assert three_seeds.tau_note == "needs >= 4 seeds; these records have 3"
    four_configs = [r for r in records if r["config_hash"] != "e"]
    assert build_leaderboard(four_configs, "fid_digits").kendall_tau is None
    write_leaderboard(four_configs, tmp_path, "fid_digits", plots=False)
    assert (
        "Kendall tau, two disjoint seed halves): omitted (needs >= 5 configs; this leaderboard has 4)."
        in (tmp_path / "leaderboard.md").read_text()
    )


def test_collapsed_runs_are_counted_among_the_runs_that_record_it(tmp_path):
    records = [rec("a", 0, 1.0, collapsed=1.0), rec("a", 1, 1.1, collapsed=0.0), rec("a", 2, 1.2)]
    records += [rec("b", s, 2.0 + s, mode="constant") for s in range(3)]  # older records: no flag
    lb = build_leaderboard(records, "fid_digits")
    assert [r.collapsed for r in lb.rows] == [(1, 2), None]
    write_leaderboard(records, tmp_path, "fid_digits", plots=False)
    cells = [line.split(" | ")[4] for line in (tmp_path / "leaderboard.md").read_text().splitlines()[-2:]]
    assert cells == ["1/2", "–"]  # the collapsed column
    table = pl.read_csv(tmp_path / "leaderboard.csv")
    assert table["collapsed"].to_list() == [1, None]
    assert table["collapsed_of"].to_list() == [2, None]


def test_a_missing_instability_is_missing_never_zero_or_infinite(tmp_path):
    records = [rec("a", 0, 1.0, instability=2.0), rec("a", 1, 1.1, instability=None), rec("a", 2, 1.2, instability=4.0)]
    records += [rec("b", s, 2.0 + s, mode="constant", instability=None) for s in range(3)]
    part = INSTABILITY_PARTS[0]
    records[0]["metrics"][part] = 0.5  # one seed of a has the part; the others do not
    lb = build_leaderboard(records, "fid_digits")
    a, b = lb.rows
    assert a.instability.mean == pytest.approx(3.0)  # over the two seeds that have it
    assert a.instability.n == 2
    assert a.parts[part] == 0.5
    assert b.parts[part] is None
    assert math.isnan(b.instability.mean)
    write_leaderboard(records, tmp_path, "fid_digits", plots=False)
    table = pl.read_csv(tmp_path / "leaderboard.csv")
    assert table["instability_mean"].to_list() == [pytest.approx(3.0), None]
    assert table[part].to_list() == [0.5, None]
    b_line = (tmp_path / "leaderboard.md").read_text().splitlines()[-1]
    assert "| – | n/a |" in b_line  # instability and its interval


def test_one_config_one_seed_renders_without_ci(tmp_path):
    write_leaderboard([rec("only", 0, 3.0)], tmp_path, "fid_digits", baseline=None, plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "n/a" in md
    assert "(small n)" in md
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 2


def test_regeneration_is_byte_identical_including_plots(tmp_path):
    def evals(final):
        return [{"step": st, "fid_digits": {"raw": final * f}} for st, f in ((1, 3.0), (2, 1.0))]

    records = [rec("base", s, 10.0 + s, baseline="ddpm", floor=0.5, evals=evals(10.0 + s)) for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant", evals=evals(5.0 + s)) for s in range(3)]
    write_leaderboard(records, tmp_path / "a", "fid_digits", baseline="ddpm")
    write_leaderboard(list(reversed(records)), tmp_path / "b", "fid_digits", baseline="ddpm")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [
        "curves.png", "curves.svg", "feature_norms.png", "feature_norms.svg", "leaderboard.csv", "leaderboard.html",
        "leaderboard.md", "leaderboard.parquet", "leaderboard.tex", "leaderboard_long.csv",
        "leaderboard_long.parquet", "leaderboard_summary.csv", "leaderboard_summary.parquet",
        "metric_over_training.png", "metric_over_training.svg", "pareto.png", "pareto.svg",
    ]  # fmt: skip
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (
        "Floor (training images scored like samples): fid_digits = 0.5"
        in (tmp_path / "a" / "leaderboard.md").read_text()
    )


def test_plots_read_records_of_the_current_engine(tmp_path, tiny):
    from stabench.engine import run_trial

    records = [run_trial(tiny(f"seed={s}", "lsc.mode=constant" if s else "lsc.mode=none")) for s in range(2)]
    write_leaderboard(records, tmp_path, "best_probe_loss")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "feature_norms.png").stat().st_size > 0


def test_machine_readable_tables_hold_numbers(tmp_path):
    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant") for s in range(3)]
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    csv, parquet = pl.read_csv(tmp_path / "leaderboard.csv"), pl.read_parquet(tmp_path / "leaderboard.parquet")
    for table in (csv, parquet):
        assert table.height == 2
        assert table.schema["mean"] == pl.Float64
        assert table.schema["median"] == pl.Float64
        assert table.schema["delta_ci_lo"] == pl.Float64
        assert table.schema["n"] == pl.Int64
        assert table.schema["pareto"] == pl.Boolean
        assert table["metric"].to_list() == ["fid_digits"] * 2
        assert table["baseline"].to_list() == ["ddpm"] * 2
        assert table.filter(pl.col("config") == "ddpm")["delta"].to_list() == [None]  # no delta against itself
        assert table.filter(pl.col("config") != "ddpm")["delta"].to_list() == [pytest.approx(-5.0)]
    assert parquet.schema["seeds"] == pl.List(pl.Int64)
    assert parquet["seeds"].to_list() == [[0, 1, 2]] * 2
    assert csv["seeds"].to_list() == ["0;1;2"] * 2  # CSV holds no lists


def test_leaderboards_of_two_metrics_concatenate():
    records = [rec("base", s, 10.0 + s, baseline="ddpm", kid_digits=0.1 * s) for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant", kid_digits=0.2) for s in range(3)]
    tables = [numeric_table(build_leaderboard(records, m, baseline="ddpm")) for m in ("fid_digits", "kid_digits")]
    both = pl.concat(tables)
    assert both.height == 4
    assert both.group_by("metric").agg(pl.col("mean").min()).sort("metric").rows() == [
        ("fid_digits", pytest.approx(6.0)),
        ("kid_digits", pytest.approx(0.1)),
    ]


PDFLATEX = shutil.which("pdflatex")


def test_latex_table_aligns_decimals_and_explains_itself(tmp_path):
    records = [rec("base", s, 10.0 + 0.3 * s, baseline="ddpm") for s in range(3)]
    records += [rec("good", s, 5.0 + 0.01 * s - 0.02 * (s == 1), mode="constant") for s in range(3)]
    for r in records[3:]:
        r["tags"] = {"sweep": "lsc", "baseline_point": "good_1"}  # labelled good_1@lsc
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    text = (tmp_path / "leaderboard.tex").read_text()
    assert "\\begin{tabular}{l r S[table-format=2.2(1)] S[table-format=-1.1(1)] @{}l S[table-format=1.3]}" in text
    assert "good\\_1 & 3 & 5.00 \\pm 0.04 & -5.3 \\pm 0.7 & $^*$ & 0.100 \\\\" in text  # digits follow each interval
    assert "ddpm & 3 & 10.3 \\pm 0.7 & {--} &  & 0.100 \\\\" in text
    assert "@lsc" not in text.split("\\begin{tabular}")[1]  # short labels in the rows
    assert "\\caption{\\texttt{fid\\_digits} (lower is better) of the configs of sweep \\texttt{lsc}" in text
    assert "against the baseline \\texttt{ddpm}" in text
    assert "$^*$ significant at 0.05 after Holm's correction" in text  # the legend
    if PDFLATEX is None and not os.environ.get("CI"):
        pytest.skip("no pdflatex installed (CI installs Debian's texlive packages: .ci/run)")
    assert PDFLATEX, "pdflatex is not installed (apt-get install texlive-latex-recommended texlive-science)"
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\usepackage{siunitx}"
        "\\begin{document}\\input{leaderboard.tex}\\end{document}\n"
    )
    run = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 0
    assert "Overfull" not in (tmp_path / "paper.log").read_text()


def test_digits_follow_the_interval_width():
    assert tex_number(1.2660657, 0.9675, 1.5646).text == "1.27 \\pm 0.30"  # half-width 0.299: two digits
    assert tex_number(0.7, 0.4, 1.0).text == "0.7 \\pm 0.3"  # 0.3: one digit
    assert tex_number(1234.5, 1199.5, 1269.5).text == "1230 \\pm 40"
    assert tex_number(-0.004, -0.0051, -0.0029).text == "-0.0040 \\pm 0.0011"
    assert tex_number(3.14159).text == "3.14"  # no interval: three significant digits
    assert tex_number(math.inf).text == "{$\\infty$}"


def test_long_tables_of_two_leaderboards_concatenate(tmp_path):
    records = [rec("base", s, 10.0 + s, baseline="ddpm", kid_digits=0.1 * s) for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant", kid_digits=0.2) for s in range(3)]
    write_leaderboard(records, tmp_path / "fid", "fid_digits", baseline="ddpm", plots=False)
    write_leaderboard(records, tmp_path / "kid", "kid_digits", baseline=None, plots=False)
    both = pl.concat([pl.read_parquet(tmp_path / m / "leaderboard_long.parquet") for m in ("fid", "kid")])
    assert {"metric", "direction", "baseline", "config", "sweep", "seed", "value"} <= set(both.columns)
    assert both.height == 2 * 2 * 3 * 2  # leaderboards x metrics (ranked and instability) x seeds x configs
    means = (
        both.filter(pl.col("metric") == pl.col("ranked_by")).group_by("metric", "config").agg(pl.col("value").mean())
    )
    assert means.sort("metric", "config").rows() == [
        ("fid_digits", "ddpm", 11.0), ("fid_digits", "s#0", 6.0),
        ("kid_digits", "ddpm", pytest.approx(0.1)), ("kid_digits", "s#0", pytest.approx(0.2)),
    ]  # fmt: skip
    summaries = pl.concat([pl.read_parquet(tmp_path / m / "leaderboard_summary.parquet") for m in ("fid", "kid")])
    fid_good = summaries.filter((pl.col("metric") == "fid_digits") & (pl.col("config") == "s#0"))
    assert fid_good["delta"].to_list() == [pytest.approx(-5.0)]
    assert fid_good["seeds"].to_list() == [[0, 1, 2]]
    assert summaries.filter(pl.col("baseline").is_null())["delta"].null_count() == 4  # no baseline: no delta
    assert pl.read_csv(tmp_path / "fid" / "leaderboard_summary.csv")["seeds"].to_list()[0] == "0;1;2"


def test_the_summary_delta_is_against_the_one_baseline_config_even_when_its_label_names_two(tmp_path):
    """A store where the baseline's name was trained with two configs (a rerun with other overrides): the summary
    compares with the config the leaderboard compares with, on each shared seed once."""
    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("rerun", s, 20.0 + s, baseline="ddpm", mode="linear") for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant") for s in range(3)]
    lb = write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    summary = pl.read_parquet(tmp_path / "leaderboard_summary.parquet").filter(pl.col("metric") == "fid_digits")
    good = summary.filter(pl.col("config_hash") == "good")
    (row,) = [r for r in lb.rows if r.config_hash == "good"]
    assert good["delta_n"].to_list() == [3]
    assert good["delta"].to_list() == [pytest.approx(row.delta.mean)]
    assert summary.filter(pl.col("config_hash") == lb.baseline_hash)["delta"].to_list() == [None]


def test_polars_ranking_follows_the_rule_of_tied_ranks():
    records = [rec(h, s, v + 0.4 * s, mode=m) for h, v, m in (("a", 1.0, "none"), ("b", 1.5, "constant"),
               ("c", 3.0, "linear"), ("d", 9.0, "learnable")) for s in range(3)]  # fmt: skip
    lb = build_leaderboard(records, "fid_digits")
    expected = tied_ranks([(r.quality.lo, r.quality.hi) for r in lb.rows])
    assert [r.rank for r in lb.rows] == expected
    assert [r.config_hash for r in lb.rows] == ["a", "b", "c", "d"]


def _study(n_trials: int):
    import optuna

    def objective(trial):
        x, y = trial.suggest_float("optim.lr", 0.0, 1.0), trial.suggest_float("ema.decay", 0.0, 1.0)
        trial.suggest_categorical("lsc.mode", ["none"])  # never varied
        return (x - 0.3) ** 2 + 0.01 * y

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="lsc", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    return study


def test_knob_importance_names_its_evaluator_and_needs_enough_trials(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png, why = write_importance(_study(MIN_IMPORTANCE_TRIALS), tmp_path)
    assert why is None
    assert not [w for w in caught if "optuna" in str(w.filename) or "Importance" in str(w.message)]
    svg = (tmp_path / "importance-lsc.svg").read_text()
    assert "PedAnovaImportanceEvaluator" in svg
    assert "never varied, left out: lsc.mode" in svg
    assert Path(png).name == "importance-lsc.png"
    png, why = write_importance(_study(3), tmp_path / "few")
    assert png is None
    assert why == (
        "knob importance of study `lsc`: omitted (3 completed trials; PED-ANOVA (optuna.importance."
        "PedAnovaImportanceEvaluator, top 10% of trials vs all) needs >= 20)."
    )
