import os

import pytest
import torch

from tests.helpers import tiny_config

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny():
    return tiny_config


def pytest_terminal_summary(terminalreporter):
    from tests.sweep.faults import ROWS, format_table

    if ROWS:  # the kill -9 scenarios that ran (tests/sweep/test_faults.py)
        terminalreporter.write_sep("=", "fault scenarios: trials requested / finished, records lost / duplicated")
        terminalreporter.write_line(format_table(ROWS))
