"""The paint-and-edit page in a real browser: headless Chromium, driven by Selenium, paints a stroke with
pointer events, runs the toy model and checks what came back. Marked `browser`; skipped, with the
reason, when Selenium, Chromium or chromedriver cannot be had (.ci/run installs Debian's).

The screenshot is written to $BLEND_TEST_ARTEFACTS/paint_and_edit.png (default: outputs/test-artefacts/).
"""
import base64
import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import running_edit_server
from PIL import Image

from blend.cli import EXAMPLE_IMAGE
from blend.editor import load_model

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]
WAIT_S = 90
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chrome_driver():
    """A headless Chromium WebDriver, or a skip that says what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium (the test extra: pip install -e '.[test]')")
    browser = next((shutil.which(name) for name in CHROMIUMS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(f"needs Chromium and chromedriver on PATH (found browser {browser}, driver {driver_path}); "
                    f"on Debian: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,860", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except Exception as error:  # a browser that cannot start here (no display libraries, …)
        pytest.skip(f"Chromium could not start: {str(error).splitlines()[0]}")
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    return driver


@pytest.fixture
def server(tmp_path):
    with running_edit_server(load_model("toy"), tmp_path / "out") as server:
        yield server


def get(server, url: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{url}", timeout=30) as response:
        return response.read()


def wait_until(driver, script: str, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state, error = driver.execute_script(
        "return [document.body.dataset.state, document.getElementById('error').textContent]")
    pytest.fail(f"the page did not {what} within {WAIT_S} s (state {state!r}, error {error!r})")


def test_page_paints_a_stroke_with_pointer_events_and_the_toy_edits_inside_it_only(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    width, height = 128, 96  # the toy's working size is its long side 128: edited at the photograph's own size
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((width, height), Image.LANCZOS)
    photo.save(tmp_path / "photo.png")
    driver = chrome_driver()
    try:
        open_with_photo(driver, server.url, tmp_path / "photo.png", f"{width}x{height}")
        driver.find_element(By.ID, "clear").click()
        driver.execute_script("""
            const form = document.getElementById('options');
            form.elements.prompt.value = 'a cat'; form.elements.steps.value = 20; form.elements.samples.value = 2;
            form.elements.seed.value = 7; document.getElementById('brush-size').value = 60;""")

        canvas = driver.find_element(By.ID, "mask")
        box = canvas.rect                                        # the canvas as displayed, in CSS pixels
        stroke = ActionChains(driver).move_to_element_with_offset(canvas, -int(box["width"] * 0.3), 0).click_and_hold()
        for step in range(1, 7):                                 # left to right through the middle
            stroke.move_to_element_with_offset(canvas, int(box["width"] * (-0.3 + 0.1 * step)), 0)
        stroke.release().perform()

        driver.find_element(By.ID, "run").click()
        state = wait_until(driver, "const s = document.body.dataset.state; return ['done', 'failed'].includes(s) && s",
                           "finish the job")
        assert state == "done", driver.find_element(By.ID, "error").text
        wait_until(driver, "return [...document.images].every((image) => image.complete && image.naturalWidth > 0)",
                   "load its images")
        shown = driver.execute_script("""return {
            previews: document.querySelectorAll('#previews img').length,
            results: document.querySelectorAll('#results img').length,
            downloads: [...document.querySelectorAll('#downloads a[download]')].map((a) => a.textContent),
            progress: [document.getElementById('progress').value, document.getElementById('progress').max]}""")
        job_id = driver.execute_script("return document.body.dataset.job")
        artefacts = Path(os.environ.get("BLEND_TEST_ARTEFACTS", REPO / "outputs" / "test-artefacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artefacts / "paint_and_edit.png"))
    finally:
        driver.quit()

    assert shown["results"] == 2 and shown["previews"] >= 1 and shown["progress"] == [15, 15]
    assert shown["downloads"][:2] == ["result_0.png", "result_1.png"] and shown["downloads"][2].startswith("grid.png")
    job = json.loads(get(server, f"/api/jobs/{job_id}"))
    mask = np.asarray(Image.open(io.BytesIO(get(server, job["mask"]))).convert("L")) > 127
    rows, columns = np.nonzero(mask)
    # the stroke, as painted: a horizontal band through the middle, from 20% to 80% of the width
    assert abs(rows.mean() - height / 2) < 3 and 5 <= rows.max() - rows.min() <= 25
    assert abs(columns.min() - 0.2 * width) < 10 and abs(columns.max() - 0.8 * width) < 10
    source, inside_changes = np.asarray(photo).astype(int), []
    for url in job["results"]:
        result = np.asarray(Image.open(io.BytesIO(get(server, url))).convert("RGB")).astype(int)
        assert (result[~mask] == source[~mask]).all()            # outside the stroke: the photo, exactly
        inside_changes.append(np.abs(result[mask] - source[mask]).mean())
        assert inside_changes[-1] > 10                           # inside: painted towards "a cat"
    print(f"browser saw: {shown}; mask {mask.sum()} px, rows {rows.min()}..{rows.max()}, columns {columns.min()}.."
          f"{columns.max()}; mean |result - photo| inside {np.round(inside_changes, 1)}, outside 0; "
          f"screenshot {artefacts / 'paint_and_edit.png'}")


def open_with_photo(driver, url: str, photo, size: str) -> None:
    """Load the page, wait for it, and upload `photo` (a file), waiting until the page shows it at `size` ("WxH")."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_until(driver, "return document.body.dataset.ready", "start (load /api/info and the example)")
    driver.find_element(By.ID, "photo-file").send_keys(str(photo))
    wait_until(driver, f"return document.body.dataset.photo === '{size}'", "show the uploaded photo")


def painted_mask(driver) -> np.ndarray:
    """The mask the page would send (its maskPng()), as (H, W) bool."""
    data_url = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        maskPng().then((blob) => { const reader = new FileReader(); reader.onload = () => done(reader.result);
                                   reader.readAsDataURL(blob); });""")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L")) > 127


def paint(driver, canvas, y: float, x_from: float, x_to: float, brush: int) -> None:
    """A mouse stroke (pointer events) at height y from x_from to x_to, in fractions of the canvas from its centre."""
    from selenium.webdriver.common.action_chains import ActionChains
    driver.execute_script(f"document.getElementById('brush-size').value = {brush}")
    box = canvas.rect

    def at(x: float) -> tuple:
        return int(box["width"] * x), int(box["height"] * y)

    stroke = ActionChains(driver).move_to_element_with_offset(canvas, *at(x_from)).click_and_hold()
    for step in range(1, 5):
        stroke.move_to_element_with_offset(canvas, *at(x_from + (x_to - x_from) * step / 4))
    stroke.release().perform()


def test_brush_size_undo_eraser_and_clear_change_the_mask_the_page_sends(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 96)).save(tmp_path / "photo.png")
    driver = chrome_driver()
    try:
        open_with_photo(driver, server.url, tmp_path / "photo.png", "128x96")
        canvas = driver.find_element(By.ID, "mask")
        assert not painted_mask(driver).any()                     # a new photo starts with an empty mask
        paint(driver, canvas, -0.25, -0.3, 0.3, brush=60)
        wide = painted_mask(driver)
        paint(driver, canvas, 0.25, -0.3, 0.3, brush=15)
        both = painted_mask(driver)
        narrow = both & ~wide
        assert (both >= wide).all() and narrow.any()
        rows = [np.ptp(np.nonzero(mask)[0]) for mask in (narrow, wide)]
        assert rows[0] < rows[1] / 2                              # the brush size sets the stroke's width
        driver.find_element(By.ID, "undo").click()
        assert (painted_mask(driver) == wide).all()               # undo removes the last stroke exactly
        driver.find_element(By.ID, "eraser").click()
        paint(driver, canvas, -0.25, -0.4, 0.0, brush=80)         # erase the left half of the wide stroke
        erased = painted_mask(driver)
        assert erased.any() and (erased <= wide).all() and np.nonzero(erased)[1].min() > 0.45 * 128
        driver.find_element(By.ID, "clear").click()
        assert not painted_mask(driver).any()
        driver.find_element(By.ID, "undo").click()                # clear can be undone too
        assert (painted_mask(driver) == erased).all()
        driver.find_element(By.ID, "eraser").click()
        paint(driver, canvas, 0.25, -0.3, 0.3, brush=30)
        assert (painted_mask(driver) != erased).any()
        ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
        assert (painted_mask(driver) == erased).all()             # Ctrl+Z is undo
    finally:
        driver.quit()


def test_mask_from_prompt_fills_the_brush_layer_with_the_estimated_mask_which_the_brush_then_refines(server, tmp_path):
    """The button POSTs the photograph, the prompt and the reference text to /api/mask-from; the brush layer then
    holds exactly the mask blend.editor.mask_from_prompt estimates (the toy at the photograph's own 128x96, the
    page's seed and steps); Undo brings the painted mask back, and a stroke after it adds to the estimate."""
    from selenium.webdriver.common.by import By

    from blend.editor import mask_from_prompt

    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((128, 96), Image.LANCZOS).save(tmp_path / "photo.png")
    expected = mask_from_prompt(tmp_path / "photo.png", "a cat", "coffee", model=server.components, steps=10,
                                seed=7) > 0.5
    driver = chrome_driver()
    try:
        open_with_photo(driver, server.url, tmp_path / "photo.png", "128x96")
        canvas = driver.find_element(By.ID, "mask")
        paint(driver, canvas, 0.4, -0.45, -0.3, brush=10)             # a stroke before: Undo brings it back
        before = painted_mask(driver)
        driver.execute_script("""
            const form = document.getElementById('options');
            form.elements.prompt.value = 'a cat'; form.elements.steps.value = 10; form.elements.seed.value = 7;""")
        driver.find_element(By.ID, "reference").send_keys("coffee")
        driver.find_element(By.ID, "mask-from").click()
        state = wait_until(driver, "const s = document.body.dataset.maskFrom; return ['done', 'failed'].includes(s) "
                                   "&& s", "estimate the mask")
        assert state == "done", driver.find_element(By.ID, "error").text
        filled = painted_mask(driver)
        paint(driver, canvas, -0.4, -0.45, 0.45, brush=10)            # refined: a stroke across the top
        refined = painted_mask(driver)
        driver.find_element(By.ID, "undo").click()
        driver.find_element(By.ID, "undo").click()
        undone = painted_mask(driver)
    finally:
        driver.quit()
    assert filled.shape == (96, 128) and filled.any() and not filled.all()
    assert (filled == expected).all()                                 # the brush layer is the returned mask
    assert (refined >= filled).all() and (refined & ~filled).any()    # the brush adds to it
    assert (undone == before).all()                                   # the fill is one undoable step
