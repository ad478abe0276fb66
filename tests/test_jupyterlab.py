"""The live views, used as a person uses them: JupyterLab on 127.0.0.1, Debian's Chromium (headless) opens a
notebook, runs it, moves sliders, and the views change. A screenshot goes to the test's temporary folder, or to
docs/live_views.png (the README's picture) when UPDATE_SCREENSHOTS=1.

Needs `chromium` and `chromium-driver` (Debian packages; .ci/run installs them) and selenium (requirements-dev.txt).
Every wait is bounded; the server and the browser are stopped whatever happens.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                                reason="Chromium or its driver is not installed (/usr/bin/chromium, chromedriver): apt-get install -y chromium chromium-driver")

# The cells a learner runs: the setup of the notebooks, then two views as the notebooks call them (one line each).
CELLS = [
    "import helpers, helpers.views\n"
    "weights, params = helpers.load_model(helpers.default_model_dir())\n"
    "tokenizer = helpers.load_tokenizer()\n"
    "tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)\n"
    "logits = helpers.forward(weights, params, tokens)[-1]",
    "# NBVAL_IGNORE_OUTPUT\nhelpers.views.sampling_view(logits, tokenizer)",
    "# NBVAL_IGNORE_OUTPUT\nhelpers.views.attention_explorer(weights, params, tokenizer, tokens)",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    """Return condition()'s first truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page or server is not there yet
            value = None
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free loopback port with a token, serving a temporary folder -> (url, folder)."""
    root = tmp_path / "lab"
    root.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news prompt
    env = {**os.environ, "LLAMA3_DIR": "tiny", "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings")}  # nothing is written to the user's own folders
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--allow-root", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
         "--LabApp.extension_manager=readonly"],  # CI runs as root; nothing is fetched from the network
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers():
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            return urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)

        wait_for(answers, 90, "JupyterLab to answer")
        yield url, token, root
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen):
    """End the server and its kernels (one process group, started by this test): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            return
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def view_state(driver, index: int) -> tuple[str, str]:
    """(caption text, picture src) of the index-th view on the page."""
    boxes = driver.find_elements("css selector", ".jp-OutputArea-output .widget-vbox")
    box = boxes[index]
    return (box.find_element("css selector", ".widget-html-content").text,
            box.find_element("css selector", "img").get_attribute("src"))


def move_slider(driver, view: int, slider: int, key: str, presses: int):
    from selenium.webdriver.common.action_chains import ActionChains

    box = driver.find_elements("css selector", ".jp-OutputArea-output .widget-vbox")[view]
    handle = box.find_elements("css selector", ".widget-slider .noUi-handle")[slider]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    ActionChains(driver).click(handle).perform()
    for _ in range(presses):
        ActionChains(driver).send_keys(key).perform()


def test_views_respond_to_sliders_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    url, token, root = lab
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "live_views.ipynb")

    browser.get(f"{url}/lab/tree/live_views.ipynb?token={token}")
    wait_for(lambda: "| Idle" in browser.find_element("css selector", ".jp-StatusBar-Widget").text, 120,
             "the notebook to open and its kernel to start")
    # Run ▸ Run All Cells, through the menu as a person would
    browser.find_element("xpath", "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
    wait_for(lambda: browser.find_element("css selector", "li[data-command='runmenu:run-all']:not(.lm-mod-disabled)"),
             10, "Run All Cells in the Run menu").click()
    wait_for(lambda: len(browser.find_elements("css selector", ".jp-OutputArea-output .widget-vbox img")) == 2,
             180, "both views to appear (the cells run on the tiny model)")

    before = view_state(browser, 0)
    move_slider(browser, view=0, slider=0, key=Keys.ARROW_RIGHT, presses=20)  # temperature 0.60 -> 1.60
    after = wait_for(lambda: "temperature 1.60" in view_state(browser, 0)[0] and view_state(browser, 0), 30,
                     "the sampling view to redraw at temperature 1.60")
    assert after[1] != before[1]  # a new picture
    move_slider(browser, view=0, slider=1, key=Keys.ARROW_LEFT, presses=30)  # top_p 0.90 -> 0.60
    after = wait_for(lambda: "top_p 0.60" in view_state(browser, 0)[0] and view_state(browser, 0), 30,
                     "the sampling view to redraw at top_p 0.60")

    before = view_state(browser, 1)
    move_slider(browser, view=1, slider=0, key=Keys.ARROW_RIGHT, presses=1)  # layer 0 -> 1
    after = wait_for(lambda: view_state(browser, 1)[0].startswith("layer 1, head 0") and view_state(browser, 1), 30,
                     "the attention explorer to redraw for layer 1")
    assert after[1] != before[1]

    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).key_down(Keys.CONTROL).send_keys("b").key_up(Keys.CONTROL).perform()  # hide the file browser
    views = browser.find_elements("css selector", ".jp-OutputArea-output .widget-vbox")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", views[0])
    time.sleep(1)  # let the layout settle before the picture
    shot = REPO / "docs" / "live_views.png" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "live_views.png"
    shot.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
