"""The committed leaderboard is exactly what `stabench leaderboard` makes of the committed store."""

from pathlib import Path

import pytest

from stabench.leaderboard import write_leaderboard
from stabench.store import Store

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.skipif(not (RESULTS / "store").is_dir(), reason="no committed store")
def test_committed_leaderboard_regenerates_byte_for_byte(tmp_path):
    records = list(Store(RESULTS / "store").records())
    write_leaderboard(records, tmp_path, "fid_digits", baseline="ddpm")  # the command in results/README.md
    differ = [p.name for p in sorted(tmp_path.iterdir()) if p.read_bytes() != (RESULTS / p.name).read_bytes()]
    assert not differ, f"regenerated files differ from the committed ones: {differ}"
