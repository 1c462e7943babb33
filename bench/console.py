"""``console_gallery_ms``: the web console's gallery in headless Chromium (Debian's chromium and
chromedriver, through Selenium), on the bench's stack.

Each run is a fresh navigation to ``/console/`` (a new page: no thumbnail in memory; the page
fetches with ``cache: "no-store"``, so the browser's HTTP cache holds none either), and the
time is the page's own: from navigation start (``performance.timeOrigin``) to the
``gallery-page-loaded`` mark, set once the first page (50 invocations, the default) is listed
and every thumbnail (RenderInvocation with ``max_dimension=256``) is fetched and decoded. The
first run warms the browser and is not counted; the key is the median of the others.

Also runnable alone against any stack: ``python -m bench.console http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

PAGE_SIZE = 50
TIMEOUT_S = 60.0


class ConsoleBenchError(RuntimeError):
    """The gallery could not be measured (no browser, or the page did not load)."""


def _driver(profile: str) -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # pragma: no cover - selenium is a dev dependency
        raise ConsoleBenchError("selenium is not installed (make setup)") from exc
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        raise ConsoleBenchError(
            "chromium and chromedriver are needed (apt-get install chromium-driver)"
        )
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def gallery_ms(base_url: str, runs: int = 4) -> dict[str, Any]:
    """Load the gallery ``runs`` times; the median (ms) of all but the first, and each run's
    thumbnail count (a full page is ``PAGE_SIZE``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    times: list[float] = []
    thumbnails: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench-console-") as profile:
        driver = _driver(profile)
        try:
            for _ in range(runs):
                driver.get(f"{base_url}/console/")
                WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.05).until(
                    lambda d: d.execute_script(
                        "return document.body.dataset.galleryPages === '1' || "
                        "!document.getElementById('error').hidden"
                    )
                )
                error = driver.execute_script(
                    "const e = document.getElementById('error');"
                    "return e.hidden ? '' : e.textContent.trim()"
                )
                if error:
                    raise ConsoleBenchError(f"the console shows an error: {error}")
                ms, shown = driver.execute_script(
                    "const m = performance.getEntriesByName('gallery-page-loaded');"
                    "return [m[m.length - 1].startTime,"
                    " document.querySelectorAll('#gallery img[src]').length]"
                )
                times.append(float(ms))
                thumbnails.append(int(shown))
        finally:
            driver.quit()
    counted = times[1:] or times
    return {
        "console_gallery_ms": round(statistics.median(counted), 1),
        "runs_ms": [round(t, 1) for t in times],
        "thumbnails": thumbnails,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("url", help="the stack's REST base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        result = gallery_ms(args.url.rstrip("/"), args.runs)
    except ConsoleBenchError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
