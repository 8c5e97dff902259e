"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium)
for the web UI's tests (import as ``from ui_browser import UiBrowser``).

``make test`` installs both packages (``tests/ui/install-browser.sh``). Screenshots go to
``$HPCAGENT_UI_SCREENSHOTS`` when it is set (docs/img is refreshed that way, see docs/ui.md).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import requests
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def gone(exc: Exception) -> bool:
    """Whether ``exc`` says the element left the document: Selenium's stale-element error, or
    chromedriver's DevTools error for the same thing, which it reports as an unknown error
    (https://github.com/SeleniumHQ/selenium/issues/15401)."""
    if isinstance(exc, StaleElementReferenceException):
        return True
    text = str(exc)
    return isinstance(exc, WebDriverException) and (
        "does not belong to the document" in text or "No node with given id" in text
    )


def browser_missing() -> str:
    """Why no browser test can run here ("" when chromium and chromedriver are installed)."""
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: run `make browser` (as root)"
    return ""


class UiBrowser:
    """One Chromium with a fresh profile, pointed at one embedded server."""

    def __init__(self, server: Any, profile: Path, downloads: Path) -> None:
        self.server = server
        self.downloads = downloads
        downloads.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(shutil.which("chromium"))
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
        service = Service(executable_path=str(shutil.which("chromedriver")))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads)},
        )

    def quit(self) -> None:
        self.driver.quit()

    # ---- navigation ----------------------------------------------------------------------------

    def open(self, path: str) -> None:
        self.driver.get(self.server.url + path)

    def path(self) -> str:
        url: str = self.driver.current_url
        return url[len(self.server.url) :]

    def wait(self, css: str, timeout: float = 30) -> WebElement:
        element: WebElement = WebDriverWait(self.driver, timeout).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css))
        )
        return element

    def wait_until(self, predicate: Any, timeout: float = 30, what: str = "") -> Any:
        # The page may be replaced while it is read (an action's redirect, a live region's
        # swap): read it again.
        def check() -> Any:
            try:
                return predicate()
            except WebDriverException as exc:
                if gone(exc):
                    return False
                raise

        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.2, ignored_exceptions=(NoSuchElementException,)
        ).until(lambda _: check(), message=what)

    def click_and_load(self, css: str, *, confirm: bool = False) -> str:
        """Click ``css`` (a submit button or link) and wait until the next page replaced this
        one; with ``confirm`` accept the confirm() dialog first and return its text.

        The old page is told from the new one by a mark set on its window (a new document has
        none), not by an element handle: chromedriver may answer a handle of a page being
        replaced with an unknown error instead of a stale one (see :func:`gone`)."""
        self.js("window.hpcagentTestOldPage = true;")
        self.click(css)
        text = self.accept_confirm() if confirm else ""

        def replaced() -> bool:
            try:
                return bool(
                    self.js(
                        "return window.hpcagentTestOldPage === undefined"
                        " && document.readyState === 'complete';"
                    )
                )
            except WebDriverException:  # between the two documents
                return False

        WebDriverWait(self.driver, 30, poll_frequency=0.1).until(
            lambda _: replaced(), message=f"the page after clicking {css}"
        )
        self.wait("body")
        return text

    def click(self, css: str, nth: int = 0) -> None:
        """Click the ``nth`` element matching ``css``, found right before the click. A live
        region (live.js) may replace it between the find and the click, as it may under a
        user's pointer: then it is found again and clicked (the failed click reached nothing)."""

        def attempt() -> bool:
            try:
                self.find_all(css)[nth].click()
            except WebDriverException as exc:
                if gone(exc):
                    return False
                raise
            return True

        WebDriverWait(self.driver, 30, poll_frequency=0.1).until(
            lambda _: attempt(), message=f"clicking {css} [{nth}]"
        )

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def sign_in(self, access_key: str | None = None, secret_key: str | None = None) -> None:
        self.open("/login")
        self.wait("#access_key").send_keys(access_key or self.server.access_key)
        self.find("#secret_key").send_keys(secret_key or self.server.secret_key)
        self.find("#sign-in").click()

    def clone_and_edit(self, task_id: str, name: str, param: str, value: str) -> str:
        """In the UI: clone the task as ``name``, set ``param`` (``Section/name``) to ``value``
        in the draft editor, save; returns the clone's id (the browser is on its page)."""
        self.open(f"/tasks/{task_id}")
        field = self.find("#clone-name")
        field.clear()
        field.send_keys(name)
        self.find("#clone").click()
        self.wait("#edit-form")
        clone_id = self.path().split("/")[2]
        field = self.find(f"input[data-param='{param}']")
        field.clear()
        field.send_keys(value)
        return clone_id

    def save_and_enqueue(self, queue_id: str) -> None:
        """Save the draft editor, then enqueue the task to ``queue_id`` from its page."""
        self.find("#save").click()
        self.wait("#panel-configuration")
        self.find(f"#enqueue-queue option[value='{queue_id}']").click()
        self.find("#enqueue").click()
        self.wait_until(lambda: self.text("#task-status") == "queued")

    def accept_confirm(self) -> str:
        """Accept the confirm() dialog an action opened; returns its text."""
        alert = WebDriverWait(self.driver, 10).until(ec.alert_is_present())
        text = str(alert.text)
        alert.accept()
        return text

    def alert_open(self) -> bool:
        try:
            self.driver.switch_to.alert  # noqa: B018 - raises when there is none
        except NoAlertPresentException:
            return False
        return True

    def errors(self) -> list[str]:
        """SEVERE browser console entries since the last call (CSP violations, JS errors)."""
        return [
            str(e.get("message"))
            for e in self.driver.get_log("browser")
            if e.get("level") == "SEVERE" and "favicon" not in str(e.get("message"))
        ]

    def session(self) -> requests.Session:
        """A ``requests`` session with the browser's cookies (the signed-in session)."""
        sess = requests.Session()
        for cookie in self.driver.get_cookies():
            sess.cookies.set(cookie["name"], cookie["value"], path=cookie.get("path", "/"))
        return sess

    def screenshot(self, name: str) -> Path | None:
        """Save a PNG of the page to ``$HPCAGENT_UI_SCREENSHOTS/<name>.png`` (when set)."""
        folder = os.environ.get("HPCAGENT_UI_SCREENSHOTS")
        if not folder:
            return None
        target = Path(folder) / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(0.3)  # let charts finish their transitions
        self.driver.save_screenshot(str(target))
        return target

    def downloaded(self, name: str, timeout: float = 30) -> Path:
        path = self.downloads / name
        self.wait_until(lambda: path.exists() and path.stat().st_size > 0, timeout, name)
        return path
