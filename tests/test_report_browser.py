"""report.html in headless Chromium: tables and images render, sorting works; a screenshot is saved."""

import os
import shutil

import pytest

from conftest import ROOT


def _driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1300,2000"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def test_report_renders_and_sorts(trained_full, tmp_path):
    from selenium.webdriver.common.by import By

    page = trained_full / "report.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no network, no CDN
    driver = _driver()
    try:
        driver.get(page.as_uri())
        assert driver.find_element(By.ID, "before-after").is_displayed()
        assert len(driver.find_elements(By.CSS_SELECTOR, "#per-task tbody tr")) >= 2
        imgs = driver.find_elements(By.TAG_NAME, "img")
        assert len(imgs) >= 2 and all(driver.execute_script("return arguments[0].naturalWidth", i) > 100 for i in imgs)
        rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
        assert len(rows) >= 5
        header = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#predictions th")]
        col = header.index("rougeL")

        def column():
            return [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v"))
                    for r in driver.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")]

        assert column() == sorted(column())  # worst first
        th = driver.find_elements(By.CSS_SELECTOR, "#predictions th")[col]
        th.click()
        th.click()  # second click: descending
        assert column() == sorted(column(), reverse=True)
        shot = os.path.join(ROOT, "outputs", "test-screenshots")
        os.makedirs(shot, exist_ok=True)
        driver.save_screenshot(os.path.join(shot, "report.png"))
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10000
    finally:
        driver.quit()
