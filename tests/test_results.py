"""The committed leaderboards are exactly what `stabench leaderboard` makes of the committed validation store."""

from pathlib import Path

import pytest

from stabench.leaderboard import write_leaderboard
from stabench.store import Store
from stabench.validate import CONTROL_NAMES, LEADERBOARD_METRICS, regime_sweep

VALIDATION = Path(__file__).resolve().parents[1] / "results" / "validation"


@pytest.mark.skipif(not (VALIDATION / "store").is_dir(), reason="no committed store")
@pytest.mark.parametrize("regime", sorted(CONTROL_NAMES))
def test_committed_leaderboard_regenerates_byte_for_byte(tmp_path, regime):
    sweep = regime_sweep(regime)
    records = list(Store(VALIDATION / "store").records(sweep=sweep))
    # the command in results/README.md
    write_leaderboard(records, tmp_path, LEADERBOARD_METRICS[regime], baseline=f"{CONTROL_NAMES[regime]}@{sweep}")
    committed = VALIDATION / regime
    differ = [p.name for p in sorted(tmp_path.iterdir()) if p.read_bytes() != (committed / p.name).read_bytes()]
    assert not differ, f"regenerated files differ from the committed ones: {differ}"
    assert len({r["seed"] for r in records}) >= 5
