"""The MLflow UI as a user meets it, in a real browser: ``mlflow ui`` on 127.0.0.1 over the shared
demo run's store, opened in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium with the system driver: nothing downloads a browser). Screenshots of every page
land in the test's output folder (``tmp_path``)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.e2e.conftest import free_port, serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STAGES = ("corpus", "pretrain", "finetune", "evaluate")
WAIT_S = 90  # the React UI renders after several API calls; 2 busy cores are slow


@pytest.fixture(scope="module")
def mlflow_ui(demo_run, tmp_path_factory):
    """``mlflow ui`` over the demo's sqlite store on a free port of 127.0.0.1; yields its URL."""
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--backend-store-uri",
        demo_run.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, log, f"{url}/health"):
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver (no Selenium Manager download)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"BROWSER TEST NOT RUN: {CHROMIUM} / {CHROMEDRIVER} missing; install Debian's "
            "`chromium chromium-driver` (.ci/run does when it can)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1920,1200",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _body(driver) -> str:
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:  # noqa: BLE001 - the page is re-rendering
        return ""


def wait_text(driver, shots: Path, name: str, *texts: str) -> str:
    """Wait until the page shows every one of ``texts``; screenshot it as ``<name>.png``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(
            lambda d: all(t in _body(d) for t in texts)
        )
    except TimeoutException:
        driver.save_screenshot(str(shots / f"{name}-FAILED.png"))
        missing = [t for t in texts if t not in _body(driver)]
        pytest.fail(f"{name}: {missing} not shown at {driver.current_url}; page:\n{_body(driver)}")
    time.sleep(1)  # let late cells (datasets, models) fill before the picture
    driver.save_screenshot(str(shots / f"{name}.png"))
    return _body(driver)


def test_mlflow_ui_shows_the_demo_in_a_browser(demo_run, mlflow_ui, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = tmp_path / "screenshots"
    shots.mkdir()
    client = mlflow.MlflowClient(tracking_uri=demo_run.uri)
    exps = {e.name: e for e in client.search_experiments()}
    (version,) = client.search_model_versions("name='scfm-demo'")
    pre = client.get_run(version.run_id)
    (logged,) = client.search_logged_models([pre.info.experiment_id])
    corpus_name = pre.inputs.dataset_inputs[0].dataset.name  # "corpus v1"

    # the experiments of every stage are listed
    browser.get(f"{mlflow_ui}/#/experiments")
    wait_text(browser, shots, "01-experiments", *STAGES)

    # a run's page shows its lineage tags (the pretraining run: corpus version and build run)
    browser.get(f"{mlflow_ui}/#/experiments/{pre.info.experiment_id}/runs/{pre.info.run_id}")
    wait_text(
        browser,
        shots,
        "02-pretrain-run",
        "scfm.corpus_version",
        "scfm.corpus_run_id",
        pre.data.tags["scfm.corpus_run_id"],
    )

    # the pretraining runs table: Dataset and Model columns filled
    browser.get(f"{mlflow_ui}/#/experiments/{pre.info.experiment_id}/runs")
    text = wait_text(browser, shots, "03-pretrain-runs", pre.info.run_name, "Dataset", "Model")
    assert corpus_name in text, text
    # the Models column: the registered version first ("scfm-demo v1"), the logged model behind it
    assert f"{version.name}\nv{version.version}" in text, text
    assert logged.source_run_id == pre.info.run_id

    # an evaluation run: lineage back to the pretraining run; the corpus it descends from
    evaluation = client.search_runs(
        [exps["evaluate"].experiment_id], filter_string="tags.`scfm.task` = 'annotation'"
    )[0]
    browser.get(
        f"{mlflow_ui}/#/experiments/{exps['evaluate'].experiment_id}/runs/{evaluation.info.run_id}"
    )
    wait_text(browser, shots, "04-annotation-run", "scfm.pretrain_run_id", pre.info.run_id)
    browser.get(f"{mlflow_ui}/#/experiments/{exps['evaluate'].experiment_id}/runs")
    wait_text(browser, shots, "05-evaluate-runs", evaluation.info.run_name, corpus_name)

    # the sweep's trials are nested under their parent run: collapsed, then expanded
    finetune = exps["finetune"].experiment_id
    parent = next(
        r
        for r in client.search_runs([finetune], filter_string="tags.`scfm.sweep` = 'parent'")
        if r.data.tags.get("scfm.model_uri")  # the demo model's sweep, not the control's
    )
    trials = client.search_runs(
        [finetune], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(trials) >= 2
    browser.get(f"{mlflow_ui}/#/experiments/{finetune}/runs")
    wait_text(browser, shots, "06-sweep-collapsed", parent.info.run_name)

    def row(run_id):  # the runs table (ag-grid) keys each row by its run id
        return f"[role='row'][row-id='{run_id}']"

    assert "ag-row-level-0" in browser.find_element(
        By.CSS_SELECTOR, row(parent.info.run_id)
    ).get_attribute("class")
    assert not any(browser.find_elements(By.CSS_SELECTOR, row(t.info.run_id)) for t in trials), (
        "trials listed at the top level, not folded under their sweep"
    )
    expand = f"{row(parent.info.run_id)} [col-id='attributes.`Run Name`'] button"
    WebDriverWait(browser, WAIT_S).until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, expand))
    ).click()
    wait_text(browser, shots, "07-sweep-expanded", *(t.info.run_name for t in trials))

    # right below the parent, indented under it (the UI indents child rows itself)
    def place(run_id):
        r = browser.find_element(By.CSS_SELECTOR, row(run_id))
        name = r.find_element(By.CSS_SELECTOR, "[col-id='attributes.`Run Name`'] a")
        return int(r.get_attribute("row-index")), name.location["x"]

    top, x = place(parent.info.run_id)
    below = sorted(place(t.info.run_id) for t in trials)
    assert [i for i, _ in below] == list(range(top + 1, top + 1 + len(trials))), (top, below)
    assert all(cx > x for _, cx in below), (x, below)
    assert len(list(shots.glob("*.png"))) >= 7
    if os.environ.get("SCFM_SCREENSHOTS"):  # keep them beyond pytest's tmp retention
        shutil.copytree(shots, os.environ["SCFM_SCREENSHOTS"], dirs_exist_ok=True)
