import os

import pytest
import torch

from tests.helpers import shared_ray, stop_ray, tiny_config

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(scope="session")
def ray_kill_marker(tmp_path_factory):
    """The file that says the shared Ray's one kill mid-seed has happened (tests/sweep/faults.py)."""
    yield tmp_path_factory.mktemp("ray-hooks") / "killed"
    stop_ray()


@pytest.fixture
def local_ray(ray_kill_marker):
    """The local Ray shared by the in-process Ray tests (started at the first such test, kept for the next);
    yields its kill marker."""
    pytest.importorskip("ray")
    shared_ray(ray_kill_marker)
    return ray_kill_marker


def pytest_collection_modifyitems(items):
    """The tests on the shared Ray run one after another (where the first of them stands), so that Ray starts once
    for all of them rather than again after each module that needs a Ray of its own."""
    shared = [item for item in items if "local_ray" in getattr(item, "fixturenames", ())]
    if shared:
        first, on_shared = items.index(shared[0]), set(shared)
        rest = [item for item in items if item not in on_shared]
        items[:] = rest[:first] + shared + rest[first:]


def pytest_terminal_summary(terminalreporter):
    from tests.sweep.faults import ROWS, format_table

    if ROWS:  # the kill -9 scenarios that ran (tests/sweep/test_faults.py)
        terminalreporter.write_sep("=", "fault scenarios: trials requested / finished, records lost / duplicated")
        terminalreporter.write_line(format_table(ROWS))
