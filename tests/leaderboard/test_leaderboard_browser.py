"""The HTML leaderboard in a real browser: Debian's Chromium, headless, opens the self-contained page, runs its
sorting script and renders the table and the embedded plots."""

import json
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


# Run inside the page at 800 px: scroll each header cell into view and ask the browser what is drawn at its centre
# (a cell hidden under the sticky column or outside the window is not reachable); the visible text's backticks.
PROBE = """<script>
const box = document.querySelector('.table-scroll');
const cells = Array.from(document.querySelectorAll('#leaderboard thead th'));
const reachable = cells.map(th => {
  th.scrollIntoView({inline: 'end', block: 'nearest'});
  const r = th.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return r.left >= 0 && r.right <= window.innerWidth && hit !== null && th.contains(hit);
});
const result = {width: window.innerWidth, page: document.documentElement.scrollWidth, box: box.clientWidth,
  table: box.scrollWidth, overflow: getComputedStyle(box).overflowX,
  backticks: document.body.innerText.split('`').length - 1,
  columns: cells.length, unreachable: cells.filter((th, i) => !reachable[i]).map(th => th.textContent)};
document.body.insertAdjacentHTML('beforeend', '<pre id=probe>' + JSON.stringify(result) + '</pre>');
</script>"""


def test_every_column_is_reachable_at_800_px_and_no_markdown_shows(page, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    shown = headless("--dump-dom", "--window-size=800,900", url=probed.as_uri())
    assert shown.returncode == 0, shown.stderr[-2000:]
    result = json.loads(re.search(r"<pre id=\"probe\">(.*?)</pre>", shown.stdout).group(1))
    assert result["width"] == 800
    assert result["table"] > result["box"]  # the table is wider than the window: it must scroll
    assert result["overflow"] in ("auto", "scroll")
    assert result["page"] <= result["width"]  # the page itself does not widen; the table scrolls in its box
    assert result["columns"] >= 20
    assert result["unreachable"] == []
    assert result["backticks"] == 0
    assert "<code>fid_digits</code>" in page.read_text()


def test_the_page_fits_phones(page):
    assert "<meta name='viewport' content='width=device-width, initial-scale=1'>" in page.read_text()
