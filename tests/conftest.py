import os

import pytest
import torch

from stabench.config import load_config

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = [
    "preset=tiny",
    "batch_size=32",
    "probe_every=5",
    "probe_size=16",
    "eval.every=10",
    "samples=0",
    "stability.burn_in=5",
]


def tiny_config(*overrides: str, steps: int = 20):
    """A seconds-long real trial on 8x8 digits with a tiny UNet."""
    return load_config(None, TINY + [f"steps={steps}", *overrides])


@pytest.fixture
def tiny():
    return tiny_config


def pytest_terminal_summary(terminalreporter):
    from tests.faults import ROWS, format_table

    if ROWS:  # the kill -9 scenarios that ran (tests/test_faults.py)
        terminalreporter.write_sep("=", "fault scenarios: trials requested / finished, records lost / duplicated")
        terminalreporter.write_line(format_table(ROWS))
