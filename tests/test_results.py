"""The committed leaderboards are exactly what `stabench leaderboard` makes of the committed validation stores."""

from pathlib import Path

import polars as pl
import pytest

from stabench.leaderboard import write_leaderboard
from stabench.records.store import Store
from stabench.validate import regime_sweep

VALIDATION = Path(__file__).resolve().parents[1] / "results" / "validation"
# every committed leaderboard (<run>/<regime>/leaderboard.csv beside <run>/store): its table names its metric and
# baseline
COMMITTED = sorted(p.parent.relative_to(VALIDATION) for p in VALIDATION.glob("*/*/leaderboard.csv"))


@pytest.mark.parametrize("board", COMMITTED, ids=str)
def test_committed_leaderboard_regenerates_byte_for_byte(tmp_path, board):
    committed = VALIDATION / board
    [(metric, baseline)] = pl.read_csv(committed / "leaderboard.csv").select("metric", "baseline").unique().rows()
    records = list(Store(committed.parent / "store").records(sweep=regime_sweep(committed.name)))
    write_leaderboard(records, tmp_path, metric, baseline=baseline)  # the command in results/README.md
    differ = [p.name for p in sorted(tmp_path.iterdir()) if p.read_bytes() != (committed / p.name).read_bytes()]
    assert not differ, f"regenerated files differ from the committed ones: {differ}"
    assert len({r["seed"] for r in records}) >= 5


def test_every_committed_leaderboard_is_checked():
    assert {Path("exploratory/stress"), Path("exploratory/quality")} <= set(COMMITTED)
