"""The explorer in a real browser: JupyterLab on a free localhost port, headless Chromium (Debian's, driven by
selenium; no browser download), the explorer widget run in a notebook, its threshold slider and image picker
moved, and the CAM image checked to change in screenshots (kept under ``$CONTA_KIT_ARTIFACTS`` when set, else in
the test's folder). Skipped, with the reason, where Chromium, chromedriver or selenium is missing. Everything it
starts it stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                       "(apt-get install chromium chromium-driver; .ci/run installs them)"),
]

EXPLORER = """\
import torch
from conta_kit.data import ConfoundedScenes
from conta_kit.report.explore import CamExplorer

scenes = ConfoundedScenes("val", num_images=4, image_size=64, seed=0)
items = [scenes[i] for i in range(4)]
images, masks, labels = (torch.stack([it[k] for it in items]) for k in ("image", "mask", "labels"))
g = torch.Generator().manual_seed(0)
smooth = lambda t: torch.nn.functional.avg_pool2d(t, 9, 1, 4)
cams = {0: {True: smooth(torch.rand(4, 8, 64, 64, generator=g))},
        1: {True: smooth(torch.rand(4, 8, 64, 64, generator=g)), False: smooth(torch.rand(4, 8, 64, 64, generator=g))}}
ex = CamExplorer(images, masks, labels, cams, list(scenes.class_names))
ex.show(interactive=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, server: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode} before listening (see lab.log)")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not listen on port {port} within {timeout} s")


def test_the_explorer_reacts_to_its_controls_in_a_real_browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pinned in requirements.txt)")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path / "lab"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(EXPLORER)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "explorer.ipynb")
    shots = Path(os.environ.get("CONTA_KIT_ARTIFACTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), "kit-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={folder}", "--LabApp.news_url=", "--ServerApp.open_browser=False",
                               *(["--allow-root"] if os.geteuid() == 0 else [])],
                              stdout=subprocess.DEVNULL, stderr=(tmp_path / "lab.log").open("w"), env=env,
                              start_new_session=True)
    driver = None
    try:
        _wait_port(port, 60, server)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1500,1100"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=opts)
        driver.set_page_load_timeout(60)
        # JupyterLab re-renders while it loads: a found element may go stale, so every wait retries
        wait = WebDriverWait(driver, 90, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?token={token}")
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.support import expected_conditions as ec

        editor_css = ".jp-Notebook .jp-Cell .cm-content"
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, editor_css)))
        time.sleep(3)  # the kernel starts

        def focus_editor(d) -> bool:
            ActionChains(d).move_to_element(d.find_element(By.CSS_SELECTOR, editor_css)).click().perform()
            return True

        wait.until(focus_editor)
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        image = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".jupyter-widgets .jp-OutputArea-output img"))

        def picture() -> tuple[str, bytes]:
            img = driver.find_element(By.CSS_SELECTOR, ".jupyter-widgets .jp-OutputArea-output img")
            return img.get_attribute("src"), img.screenshot_as_png

        def slider(label: str):
            for box in driver.find_elements(By.CSS_SELECTOR, ".widget-slider"):
                if box.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == label:
                    return box.find_element(By.CSS_SELECTOR, ".noUi-handle")
            raise AssertionError(f"no slider labelled {label!r}")

        def move(label: str, presses: int, name: str, before: str) -> tuple[str, bytes]:
            def press(d) -> bool:
                handle = slider(label)
                handle.click()
                for _ in range(presses):
                    handle.send_keys(Keys.ARROW_RIGHT)
                return True

            wait.until(press)
            wait.until(lambda d: picture()[0] != before)
            time.sleep(0.5)  # the new image has painted
            src, png = picture()
            (shots / f"explorer_{name}.png").write_bytes(png)
            return src, png

        assert image.is_displayed()
        time.sleep(0.5)
        src0, png0 = wait.until(lambda d: picture())
        (shots / "explorer_start.png").write_bytes(png0)
        src1, png1 = move("background", 30, "threshold_moved", src0)
        src2, png2 = move("image", 1, "image_picked", src1)
        assert len({src0, src1, src2}) == 3 and png0 != png1 != png2
        driver.save_screenshot(str(shots / "explorer_page.png"))
    finally:
        if driver is not None:
            driver.save_screenshot(str(shots / "explorer_last_page.png"))
            driver.quit()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
