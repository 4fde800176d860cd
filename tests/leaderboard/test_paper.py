"""The cells of `stabench reproduce scalelong`'s report on hand-made records, where every value is known: the
finite speedup path, seed pairs where only one side reached the target, and norm ratios with a seed left out."""

import math

import pytest

from stabench.leaderboard.paper import NOT_REACHED, Arm, norm_ratio, speedup_cell


def record(seed: int, mode: str, fids: list[float], norm: float | None = 1.0) -> dict:
    """A finished record of depth 12 and `mode`: FID (raw weights) at steps 100, 200, ... and a probe at 300."""
    return {
        "seed": seed,
        "config": {"workload": {"depth": 12}, "lsc": {"mode": mode}},
        "metrics": {"best_weights": "raw"},
        "evals": [{"step": 100 * (i + 1), "fid": {"raw": v}} for i, v in enumerate(fids)],
        "probes": {"step": [300], "skip_norm": [norm]},
    }


def arm(mode: str, *records: dict) -> Arm:
    return Arm(12, mode, records)


def test_a_speedup_is_the_geometric_mean_of_the_seed_ratios():
    original = arm("none", record(0, "none", [9, 5, 3]), record(1, "none", [9, 5, 3]))
    mode = arm("constant", record(0, "constant", [3, 3, 3]), record(1, "constant", [9, 3, 3]))
    cell = speedup_cell(mode, original, "fid", 3.0)
    assert cell.startswith("2.12 [")  # sqrt(300/100 * 300/200)
    assert cell.endswith("(n=2)")


def test_a_mode_that_reaches_a_target_the_original_never_does_is_said_so():
    original = arm("none", record(0, "none", [9, 8, 7]), record(1, "none", [9, 8, 7]))
    mode = arm("constant", record(0, "constant", [9, 3, 3]), record(1, "constant", [9, 8, 7]))
    cell = speedup_cell(mode, original, "fid", 3.0)
    assert cell == "no finite ratio: only this mode reached it in 1 seed pair(s)"


def test_seed_pairs_where_one_side_reached_the_target_are_counted_beside_the_finite_ratios():
    original = arm("none", *(record(s, "none", [9, 3, 3]) for s in range(3)))
    mode = arm("constant", record(0, "constant", [3, 3, 3]), record(1, "constant", [3, 3, 3]),
               record(2, "constant", [9, 8, 7]))  # fmt: skip
    cell = speedup_cell(mode, original, "fid", 3.0)
    assert cell.startswith("2 ")  # 200 / 100 on seeds 0 and 1
    assert "(n=2)" in cell
    assert "only the original reached it in 1 seed pair(s)" in cell


def test_a_norm_ratio_leaves_out_a_seed_without_a_probe_and_counts_it():
    original = arm("none", record(0, "none", [9], norm=4.0), record(1, "none", [9], norm=4.0),
                   record(2, "none", [9], norm=4.0))  # fmt: skip
    mode = arm("constant", record(0, "constant", [9], norm=2.0), record(1, "constant", [9], norm=2.0),
               record(2, "constant", [9], norm=None))  # fmt: skip
    cell = norm_ratio(mode, original, 300)
    assert cell.startswith("0.5 ")
    assert "(n=2)" in cell
    assert "1 seed pair(s) not probed there" in cell


@pytest.mark.parametrize("bad", [0.0, math.inf])
def test_a_norm_of_zero_or_inf_is_left_out_and_counted_not_a_nan_cell(bad):
    original = arm("none", record(0, "none", [9], norm=4.0), record(1, "none", [9], norm=4.0))
    mode = arm("constant", record(0, "constant", [9], norm=1.0), record(1, "constant", [9], norm=bad))
    cell = norm_ratio(mode, original, 300)
    assert cell.startswith("0.25 (n=1)")
    assert "1 with a norm of 0 or inf" in cell
    assert "nan" not in cell


def test_a_step_no_seed_probed_is_not_reached():
    original = arm("none", record(0, "none", [9]))
    mode = arm("constant", record(0, "constant", [9]))
    assert norm_ratio(mode, original, 30_000) == NOT_REACHED


def test_a_target_neither_side_reaches_is_not_reached_by_either():
    original = arm("none", record(0, "none", [9, 8]))
    mode = arm("constant", record(0, "constant", [9, 8]))
    assert speedup_cell(mode, original, "fid", 3.0) == f"{NOT_REACHED} by either"
