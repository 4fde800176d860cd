"""The HTML leaderboard in a real browser: Debian's Chromium, headless, opens the self-contained page, runs its
sorting script and renders the table and the embedded plots."""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from stabench.leaderboard import write_leaderboard
from tests.leaderboard.test_leaderboard import rec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs Chromium (.ci/run): there a missing browser is a failure, not a skip.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium installed")


def headless(*args: str, url: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "Chromium is not installed (apt-get install chromium)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
    )


class Rows(HTMLParser):
    """The text of each body row's cells, in document order."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell, self.in_body = [], None, False

    def handle_starttag(self, tag, attrs):
        self.in_body |= tag == "tbody"
        if self.in_body and tag == "tr":
            self.rows.append([])
        if self.in_body and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb")
    records = [rec("base", s, 10.0 + s, baseline="ddpm") for s in range(3)]
    records += [rec("good", s, 5.0 + s, mode="constant", instability=0.3) for s in range(3)]
    records += [rec("bad", s, 20.0 + s, mode="linear", instability=0.05) for s in range(3)]
    write_leaderboard(records, out, "fid_digits", baseline="ddpm")
    return out / "leaderboard.html"


def test_the_page_is_self_contained(page):
    html = page.read_text()
    assert "data:image/png;base64," in html
    assert not re.search(r"""src=["'](?!data:)""", html)  # nothing loaded from a file or the network


def test_the_browser_sorts_the_table_by_a_column_from_the_url(page):
    shown = headless("--dump-dom", url=page.as_uri() + "#sort=-instability")
    assert shown.returncode == 0, shown.stderr[-2000:]
    parser = Rows()
    parser.feed(shown.stdout)
    hashes = [row[-1] for row in parser.rows]  # the config_hash column
    assert hashes[0] == "good"  # instability 0.3, the largest, first when sorted descending
    assert hashes[-1] == "bad"  # 0.05
    assert 'data-sorted="-instability"' in shown.stdout


def test_a_screenshot_shows_the_table(page, tmp_path):
    shot = tmp_path / "shot.png"
    result = headless(f"--screenshot={shot}", "--window-size=1400,900", url=page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (900, 1400)
    assert (pixels < 100).mean() > 0.002  # dark pixels: text and borders
    assert len(np.unique(pixels[:450])) > 20  # rendered text (anti-aliased), not a blank or single-colour page
