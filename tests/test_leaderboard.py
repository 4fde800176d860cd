import copy
import math

import pytest

from stabench.leaderboard import build_leaderboard, pareto_front, write_leaderboard
from stabench.telemetry import INSTABILITY_PARTS

BASE_CONFIG = {"lsc": {"mode": "none", "kappa": 0.5}, "optim": {"lr": 0.001}}


def rec(config_hash, seed, fid, status="ok", evals=None, instability=0.1, baseline=None, mode="none", floor=None):
    metrics = {"fid_digits": fid, "instability": None if status == "diverged" else instability}
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
    by_hash = {r["config_hash"]: r for r in lb.rows}
    assert [r["config_hash"] for r in lb.rows] == ["good", "base", "lucky"]
    assert by_hash["lucky"]["n"] == 3
    assert by_hash["lucky"]["diverged"] == 1
    assert by_hash["lucky"]["q_mean"] == math.inf
    assert by_hash["lucky"]["u_mean"] == math.inf
    # paired delta on shared seeds: (5-10 + 6-11 + 7-12) / 3 = -5
    assert by_hash["good"]["delta"].mean == pytest.approx(-5.0)
    assert by_hash["good"]["delta"].n == 3
    assert by_hash["good"]["knobs"] == "lsc.mode=constant"


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
        )
        for s in range(3)
    ]
    records += [
        rec("never", s, 30.0, evals=[{"step": 300, "fid_digits": {"raw": 30.0}}], mode="inv_sqrt2") for s in range(3)
    ]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    rows = {r["config_hash"]: r for r in lb.rows}
    assert lb.target == 11.0  # the baseline's worst seed's final FID: every baseline seed reaches it
    assert rows["base"]["steps_to_target"] == 300
    assert rows["fast"]["steps_to_target"] == pytest.approx(180.0)  # 15 at 100, 10 at 200: 11 at 180
    assert rows["fast"]["speedup"] == pytest.approx(300 / 180)
    assert rows["never"]["steps_to_target"] == math.inf
    assert rows["never"]["speedup"] == 0.0


def test_holm_marks_only_deltas_that_survive_the_correction(tmp_path):
    base = [10.0, 11.0, 10.5, 10.2, 10.8]
    records = [rec("base", s, v, baseline="ddpm") for s, v in enumerate(base)]
    records += [rec("clear", s, v - 3.0 + 0.1 * (s % 2), mode="constant") for s, v in enumerate(base)]
    records += [rec("noise", s, v + (0.5 if s % 2 else -0.4), mode="linear") for s, v in enumerate(base)]
    lb = build_leaderboard(records, "fid_digits", baseline="ddpm")
    rows = {r["config_hash"]: r for r in lb.rows}
    assert rows["clear"]["significant"]
    assert not rows["noise"]["significant"]
    assert rows["clear"]["delta"].hi < 0
    assert not rows["clear"]["small_n"]
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    header = (tmp_path / "leaderboard.md").read_text().split("\n| rank")[1].split("\n")[0]
    assert "95% t-CI" in header
    assert all(part in header for part in INSTABILITY_PARTS)


def test_kendall_tau_between_seed_halves_needs_four_seeds():
    records = [rec(h, s, v + 0.01 * s) for h, v in (("a", 1.0), ("b", 2.0), ("c", 3.0)) for s in range(4)]
    assert build_leaderboard(records, "fid_digits").kendall_tau == pytest.approx(1.0)
    assert build_leaderboard([r for r in records if r["seed"] < 3], "fid_digits").kendall_tau is None


def test_one_config_one_seed_renders_without_ci(tmp_path):
    write_leaderboard([rec("only", 0, 3.0)], tmp_path, "fid_digits", baseline=None, plots=False)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "n/a" in md
    assert "(small n)" in md
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 2


def test_regeneration_is_byte_identical_including_plots(tmp_path):
    records = [rec("base", s, 10.0 + s, baseline="ddpm", floor=0.5) for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant") for s in range(3)]
    write_leaderboard(records, tmp_path / "a", "fid_digits", baseline="ddpm")
    write_leaderboard(list(reversed(records)), tmp_path / "b", "fid_digits", baseline="ddpm")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [
        "curves.png",
        "feature_norms.png",
        "leaderboard.csv",
        "leaderboard.html",
        "leaderboard.md",
        "leaderboard.parquet",
        "leaderboard.tex",
        "pareto.png",
    ]
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
    import polars as pl

    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant") for s in range(3)]
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    for table in (pl.read_csv(tmp_path / "leaderboard.csv"), pl.read_parquet(tmp_path / "leaderboard.parquet")):
        assert table.height == 2
        assert table.schema["fid_digits_mean"] == pl.Float64
        assert table.schema["delta_ci_lo"] == pl.Float64
        assert table.schema["n"] == pl.Int64
        assert table.schema["pareto"] == pl.Boolean
        assert table.filter(pl.col("config") == "ddpm")["delta"].to_list() == [None]  # no delta against itself
        assert table.filter(pl.col("config") != "ddpm")["delta"].to_list() == [pytest.approx(-5.0)]


def test_latex_table_is_booktabs(tmp_path):
    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("good_1", s, 5.0 + s, mode="constant") for s in range(3)]
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm", plots=False)
    lines = (tmp_path / "leaderboard.tex").read_text().splitlines()
    body = lines[lines.index("\\midrule") + 1 : lines.index("\\bottomrule")]
    assert lines[1].startswith("\\begin{tabular}{")
    assert lines[2] == "\\toprule"
    assert lines[-1] == "\\end{tabular}"
    assert len(body) == 2  # one row per config
    assert all(row.count(" & ") == lines[3].count(" & ") for row in body)  # every row fills every column
    assert all(row.endswith(" \\\\") for row in [lines[3], *body])
    assert "fid\\_digits" in lines[3]  # LaTeX specials escaped
