"""Opens a `dlcv report` HTML file in headless Chromium at a 1280 px wide window, checks that every figure
loads and that nothing is wider than the window, and saves a screenshot of the page's top:

    python scripts/check_report.py demo_out/report.html --out docs/img/demo_report.png [--height 2400]

Prints one JSON line (broken images, the page's width, the widest element) and exits 1 when a check fails.
Needs Chromium (`apt-get install chromium`)."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTH = 1280
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# run in the page once it has loaded: the answer goes to the title, which --dump-dom prints
PROBE = """<script>window.onload = () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length;
  let widest = null;
  for (const e of document.body.querySelectorAll('*')) {
    const right = e.getBoundingClientRect().right;
    if (!widest || right > widest.right) widest = {right, tag: e.tagName, text: (e.textContent || '').slice(0, 60)};
  }
  document.title = JSON.stringify({broken, page_width: document.documentElement.scrollWidth, widest});
};</script></body>"""


def browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        sys.exit("no Chromium found: apt-get install chromium")
    return found


def chromium(*args: str) -> str:
    return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},{args[0]}", *args[1:]], capture_output=True, text=True,
                          timeout=180).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, help="screenshot (.png) of the page's top")
    parser.add_argument("--height", type=int, default=2400, help="screenshot height in px (default 2400)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "probe.html"
        page.write_text(args.report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
        dom = chromium("900", "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    found = re.search(r"<title>(.*?)</title>", dom, re.S)
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")) if found else {"error": dom[-300:]}
    print(json.dumps(result))
    if args.out:
        chromium(str(args.height), f"--screenshot={args.out.resolve()}", args.report.resolve().as_uri())
    ok = result.get("broken") == 0 and result.get("page_width", WIDTH + 1) <= WIDTH
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
