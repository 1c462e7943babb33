"""The web console (console/, served by Envoy at /console/) in a real browser: Debian's headless
Chromium driven by Selenium through Debian's chromedriver, against the live e2e stack.

Through the page only: upload two shared images, browse them newest first, page, filter by
metadata, look at one (its boxes drawn where the API says: pixels of a screenshot), delete it (the
API then answers 404); an oversize file shows the API's 413 message; with JWT required, a page
without a token shows the API's 401 message. Screenshots go to build/console/ (``make
console-screenshots`` makes docs/console.png of the detail one).
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from support.credentials import AUDIENCE, ISSUER, READ_SCOPE, SCOPE, TokenIssuer
from support.http import RestClient
from support.stacks import REPO_ROOT, stack_settings

from devstack.stack import LocalStack
from inference_service.stores.cassandra import CassandraConfig

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOTS = REPO_ROOT / "build" / "console"
WAIT_S = 60
BOX_RGB = (255, 0, 255)  # console.css --box


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    pytest.skip(
        f"{names[0]} is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    )


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = _binary("chromium", "chromium-browser")
    chromedriver = _binary("chromedriver")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach out
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(WAIT_S)
    viewport(driver, 1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


def viewport(driver: Any, width: int, height: int, *, mobile: bool = False) -> None:
    """The page's viewport (not the window's, which has the browser's frame around it)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


def fits(driver: Any, width: int) -> None:
    """Nothing wider than the viewport: no sideways scrolling."""
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width, f"the page is {scroll} px wide in a {width} px viewport"


def wait(driver: Any, condition: Any, what: str) -> Any:
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        error = driver.find_element(By.ID, "error")
        shown = error.text if error.is_displayed() else "(no error shown)"
        raise AssertionError(f"timed out waiting for {what}; page error: {shown}") from None


def body_data(driver: Any, name: str) -> str:
    return driver.execute_script(f"return document.body.dataset.{name} || ''")


def open_console(driver: Any, base: str, fragment: str = "#/") -> None:
    driver.get(f"{base}/console/{fragment}")
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", "load")


def apply_filters(driver: Any, **values: str) -> list[str]:
    """Fill the gallery's filter form (unnamed fields cleared), apply it, wait for the page and
    its thumbnails; the ids shown, in order."""
    form = driver.find_element(By.ID, "filters")
    fields = {"from": "", "to": "", "model": "", "state": "", "key": "", "value": ""}
    for name, value in {**fields, "page_size": "50", **values}.items():
        field = form.find_element(By.NAME, name)
        driver.execute_script("arguments[0].value = arguments[1]", field, value)
    driver.execute_script(
        "document.body.dataset.galleryPages = ''; arguments[0].requestSubmit()", form
    )
    wait(driver, lambda d: body_data(d, "galleryPages") == "1", "the gallery's first page")
    return gallery_ids(driver)


def gallery_ids(driver: Any) -> list[str]:
    return [
        li.get_attribute("data-id") for li in driver.find_elements(By.CSS_SELECTOR, "#gallery > li")
    ]


def upload(driver: Any, base: str, files: list[Path], metadata: str) -> None:
    open_console(driver, base, "#/upload")
    form = driver.find_element(By.ID, "upload-form")
    form.find_element(By.NAME, "metadata").send_keys(metadata)
    driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    before = int(body_data(driver, "uploads") or 0)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, lambda d: int(body_data(d, "uploads") or 0) == before + len(files), "the uploads")


def list_ids(api: RestClient, filter_: str) -> list[dict]:
    from urllib.parse import quote

    reply = api.get(f"/v1/invocations?filter={quote(filter_)}")
    assert reply.status == 200, reply.body[:300]
    return reply.json()["invocations"]


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    return path


def near(pixel: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 60) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(rgb)).max() <= tolerance)


def test_upload_browse_page_filter_look_and_delete(
    browser: Any, api: RestClient, images_dir: Path, tmp_path: Path
) -> None:
    base = f"http://{api.host}:{api.port}"
    run = uuid.uuid4().hex[:12]
    files = []
    for label, source in (("a", "face-2.jpg"), ("b", "face-13.jpg")):
        path = tmp_path / f"{run}-{label}.jpg"
        shutil.copyfile(images_dir / source, path)
        files.append(path)
    upload(browser, base, files, f"run={run}")
    items = browser.find_elements(By.CSS_SELECTOR, "#uploads li.done")
    assert len(items) == 2, browser.find_element(By.ID, "uploads").text

    (a,) = list_ids(api, f'metadata.filename = "{run}-a.jpg"')
    (b,) = list_ids(api, f'metadata.filename = "{run}-b.jpg"')
    assert a["input"]["metadata"] == {"run": run, "filename": f"{run}-a.jpg"}

    # The gallery: both, newest (b, uploaded second) first, each with its thumbnail.
    open_console(browser, base)
    shown = apply_filters(browser, key="run", value=run)
    assert shown == [b["id"], a["id"]]
    sizes = browser.execute_script(
        "return [...document.querySelectorAll('#gallery img')]"
        ".map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert all(0 < max(size) <= 256 for size in sizes), sizes  # the small render, not the image
    card = browser.find_element(By.CSS_SELECTOR, f'#gallery li[data-id="{a["id"]}"]').text
    assert "succeeded" in card and f"{len(a['output']['detections'])} faces" in card, card
    fits(browser, 1280)
    screenshot(browser, "gallery.png")
    # A phone: 390 px wide, still no sideways scrolling (gallery and, below, detail).
    viewport(browser, 390, 844, mobile=True)
    fits(browser, 390)
    screenshot(browser, "gallery-390.png")
    viewport(browser, 1280, 800)

    # Paging: one a page; "More" loads the next.
    assert apply_filters(browser, key="run", value=run, page_size="1") == [b["id"]]
    more = browser.find_element(By.ID, "more")
    assert more.is_displayed()
    more.click()
    wait(browser, lambda d: body_data(d, "galleryPages") == "2", "the second page")
    assert gallery_ids(browser) == [b["id"], a["id"]]

    # A metadata filter narrows it to one.
    assert apply_filters(browser, key="filename", value=f"{run}-a.jpg") == [a["id"]]
    assert browser.find_element(By.ID, "filter-text").text == f'metadata."filename" = "{run}-a.jpg"'

    # Detail: as many boxes as the API returns, drawn at its coordinates.
    browser.find_element(By.CSS_SELECTOR, f'#gallery li[data-id="{a["id"]}"] a').click()
    wait(browser, lambda d: body_data(d, "detailReady") == "true", "the detail view")
    detections = a["output"]["detections"]
    assert detections
    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes rect.box")
    assert len(boxes) == len(detections)
    png = screenshot(browser, "detail.png")
    screen = np.asarray(Image.open(png).convert("RGB"))
    picture = browser.find_element(By.ID, "picture").rect
    scale = picture["width"] / a["output"]["image_width"]
    assert abs(picture["height"] / a["output"]["image_height"] - scale) < 0.01
    for detection in detections:
        box = detection["box"]
        x = round(picture["x"] + box["x_min"] * scale)
        y = round(picture["y"] + (box["y_min"] + box["y_max"]) / 2 * scale)
        edge = screen[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3)
        assert any(near(p, BOX_RGB) for p in edge), (box, edge.tolist())
        inside = screen[y, round(picture["x"] + (box["x_min"] + box["x_max"]) / 2 * scale)]
        assert not near(inside, BOX_RGB), (box, inside.tolist())
    fits(browser, 1280)
    viewport(browser, 390, 844, mobile=True)
    fits(browser, 390)
    screenshot(browser, "detail-390.png")
    viewport(browser, 1280, 800)
    # A box's score on focus.
    browser.execute_script("arguments[0].focus()", boxes[0])
    tip = browser.find_element(By.ID, "tip")
    wait(browser, lambda d: tip.is_displayed(), "the score tip")
    assert f"{detections[0]['score']:.3f}" in tip.text
    assert browser.find_element(By.ID, "picture").get_attribute("alt")

    # Delete, confirmed: gone from the gallery, and the API answers 404.
    browser.find_element(By.ID, "delete").click()
    alert = wait(browser, lambda d: d.switch_to.alert, "the confirmation")
    assert a["id"] in alert.text
    alert.accept()
    wait(browser, lambda d: d.execute_script("return location.hash") == "#/", "the gallery")
    wait(browser, lambda d: body_data(d, "galleryLoading") == "false", "the gallery's reload")
    assert a["id"] not in gallery_ids(browser)
    assert api.get(f"/v1/invocations/{a['id']}").status == 404
    assert api.get(f"/v1/invocations/{b['id']}").status == 200


def test_an_oversize_file_shows_the_apis_413_message(
    browser: Any, api: RestClient, images_dir: Path, tmp_path: Path
) -> None:
    import base64

    base = f"http://{api.host}:{api.port}"
    # Over the server's content limit (8 MiB), under Envoy's body cap: the server's own answer.
    content = (images_dir / "face-2.jpg").read_bytes()
    content += b"\0" * (8 * 1024 * 1024 + 4096 - len(content))
    path = tmp_path / "too-large.jpg"
    path.write_bytes(content)
    reply = api.post_json(
        "/v1/invocations", {"input": {"content": base64.b64encode(content).decode()}}
    )
    assert reply.status == 413, reply.body[:300]
    message = reply.json()["message"]
    upload(browser, base, [path], "")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "HTTP 413" in error.text and message in error.text, error.text
    assert browser.find_element(By.CSS_SELECTOR, "#uploads li.failed")


@pytest.fixture(scope="module")
def jwt_stack(
    cassandra_endpoint: CassandraConfig, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalStack, TokenIssuer]]:
    issuer = TokenIssuer(tmp_path_factory.mktemp("console-jwt"))
    settings = stack_settings(
        cassandra_endpoint,
        shared_dir,
        tmp_path_factory.mktemp("console-jwt-stack"),
        server_processes=1,
        envoy_jwt_jwks_file=issuer.jwks_file,
        envoy_jwt_issuer=ISSUER,
        envoy_jwt_audiences=[AUDIENCE],
        envoy_jwt_required_scope=SCOPE,
    )
    stack = LocalStack(settings, repo_root=REPO_ROOT, base_env=os.environ)
    stack.start()
    try:
        yield stack, issuer
    finally:
        stack.stop()


def test_with_jwt_the_page_loads_shows_the_401_message_and_asks_for_a_token(
    browser: Any, jwt_stack: tuple[LocalStack, TokenIssuer]
) -> None:
    stack, issuer = jwt_stack
    api = RestClient(stack.envoy.listen_host, stack.envoy.listen_port)
    reply = api.get("/v1/invocations")
    assert reply.status == 401
    message = reply.json()["message"]
    open_console(browser, f"http://{api.host}:{api.port}")  # the page itself needs no token
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda d: error.is_displayed(), "the error")
    assert "HTTP 401" in error.text and message in error.text, error.text
    dialog = browser.find_element(By.ID, "token-dialog")
    assert dialog.is_displayed()
    # With a token (sent as Authorization: Bearer), the gallery loads.
    token = issuer.token(scope=f"{SCOPE} {READ_SCOPE}")
    browser.find_element(By.ID, "token-input").send_keys(token)
    dialog.find_element(By.CSS_SELECTOR, "button[value=save]").click()
    wait(browser, lambda d: body_data(d, "galleryPages") == "1", "the gallery with a token")
    assert not error.is_displayed()


def test_thumbnail_renders_are_small(api: RestClient, images_dir: Path, id_prefix: str) -> None:
    """The thumbnail's render (max_dimension=256) against the full one: far fewer bytes."""
    import base64

    invocation_id = f"{id_prefix}-console-thumb"
    content = (images_dir / "face-17.jpg").read_bytes()
    reply = api.post_json(
        "/v1/invocations",
        {"input": {"id": invocation_id, "content": base64.b64encode(content).decode()}},
    )
    assert reply.status == 200, reply.body[:300]
    full = api.get(f"/v1/invocations/{invocation_id}:render")
    thumb = api.get(f"/v1/invocations/{invocation_id}:render?max_dimension=256")
    assert full.status == thumb.status == 200
    assert Image.open(io.BytesIO(thumb.body)).size == (256, 144)
    assert Image.open(io.BytesIO(full.body)).size == (1600, 898)
    assert len(thumb.body) * 10 < len(full.body), (len(thumb.body), len(full.body))
    bad = api.get(f"/v1/invocations/{invocation_id}:render?max_dimension=8")
    assert bad.status == 400 and "max_dimension" in bad.json()["message"]
