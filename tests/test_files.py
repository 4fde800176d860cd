"""Files the package writes get the mode of any new file under the user's umask, so a shared store is readable by
the rest of the team; the umask is read without being changed."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

TRIAL_UNDER_UMASK = """
import json, os, sys
os.umask(int(sys.argv[2], 8))
from stabench.engine import run_trial
from tests.helpers import tiny_config
record = run_trial(tiny_config(steps=2), sys.argv[1])
print(json.dumps(record["run_dir"]))
"""


def run_python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_trial_run_under_umask_022_writes_a_record_others_can_read(tmp_path):
    run_dir = Path(json.loads(run_python(TRIAL_UNDER_UMASK, str(tmp_path / "runs"), "022").splitlines()[-1]))
    assert mode_of(run_dir / "record.json") == 0o644
    assert mode_of(run_dir / "record.json") & stat.S_IROTH
    assert mode_of(run_dir / "config.yaml") == 0o644
    assert mode_of(run_dir) & stat.S_IXOTH  # the folder lets others reach the files


UMASK_READ = """
import os, sys
from stabench.files import current_umask
os.umask(int(sys.argv[1], 8))
seen = current_umask()
print(oct(seen), oct(os.umask(0)))
"""


@pytest.mark.parametrize("umask", ["0o22", "0o2", "0o27"])
def test_the_umask_is_read_without_being_changed(umask):
    seen, still = run_python(UMASK_READ, umask).split()
    assert int(seen, 8) == int(umask, 8)
    assert int(still, 8) == int(umask, 8)
