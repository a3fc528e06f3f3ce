"""Drive the demo page in a real headless browser, as a person would: the browser test and the docs' screenshots.

Uses Debian's `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`) through selenium; nothing is
downloaded at run time. The browser is started offline-minded: no background networking, component updates, sync or
QUIC, and every host name except the loopback address resolves to nothing, so the page cannot reach the internet.
`contacted_hosts` lists the hosts the page actually requested, for tests to check.
"""

import json
import os
import shutil
import socket
import tempfile
import time
from typing import Dict, List, Optional, Set
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def missing_browser_requirements() -> Optional[str]:
    """Why the browser cannot run here (None when it can): selenium, chromium or chromedriver absent."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install -y {package})"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class DemoPage:
    """A headless chromium on one demo page. Use as a context manager; `user_data_dir` is a fresh folder."""

    def __init__(self, url: str, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.url = url
        self.timeout = timeout
        self.user_data_dir = tempfile.mkdtemp(prefix="var-hf-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.user_data_dir}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        try:
            self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        except BaseException:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)
            raise
        self._requested: Set[str] = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.user_data_dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def wait(self, condition, timeout: Optional[float] = None, message: str = ""):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.2).until(condition, message)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def open(self):
        self.driver.get(self.url)
        self.wait(lambda d: self.find("#gen-button"), message="the demo page did not load")
        return self

    def contacted_hosts(self) -> Set[str]:
        """Hosts of every http(s)/ws(s) request the page has made so far (from chromium's performance log)."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                url = message["params"].get("request", {}).get("url") or message["params"].get("url", "")
                parsed = urlparse(url)
                if parsed.scheme in ("http", "https", "ws", "wss"):
                    self._requested.add(parsed.hostname or "")
        return set(self._requested)

    def select(self, elem_id: str, text: str) -> str:
        """Type into a searchable dropdown and pick the first match; returns the chosen option's name."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input")[0]
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text)
        self.wait(lambda d: self.find("li[role=option]"), message=f"no option matches {text!r}")
        box.send_keys(Keys.ENTER)
        self.wait(lambda d: not self.find("li[role=option]"), message=f"the options for {text!r} stayed open")
        try:  # the input shows the chosen option's full name a moment later
            self.wait(lambda d: box.get_attribute("value") != text, timeout=3)
        except TimeoutException:
            pass  # the typed text was the option's full name already
        return box.get_attribute("value")

    def set_number(self, elem_id: str, value):
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} input[type=number]")[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        box.send_keys(Keys.TAB)

    def tab(self, name: str):
        button = self.wait(lambda d: [b for b in self.find("button[role=tab]") if b.text.strip() == name] or None)[0]
        button.click()

    def loaded_images(self, css: str, count: int) -> List[Dict]:
        """Wait until `count` images under `css` have loaded; their natural sizes, alt texts and sources."""
        def ready(_):
            images = self.find(css)
            if len(images) < count:
                return None
            for image in images:
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
            script = "return arguments[0].complete && arguments[0].naturalWidth"
            if not all(self.driver.execute_script(script, image) for image in images):
                return None
            return images

        images = self.wait(ready, message=f"{count} images under {css} did not load")
        return [
            {"width": int(im.get_attribute("naturalWidth")), "height": int(im.get_attribute("naturalHeight")),
             "alt": im.get_attribute("alt") or "", "src": im.get_attribute("src")}
            for im in images
        ]

    def status(self, elem_id: str) -> str:
        """The text of a Markdown status box (without Gradio's progress timer)."""
        prose = self.find(f"#{elem_id} .prose")
        return prose[0].text.strip() if prose else ""

    def busy(self, elem_id: str) -> bool:
        """Whether an event is still running for this output (Gradio shows its status tracker on it)."""
        trackers = self.find(f"#{elem_id} [data-testid=status-tracker]")
        return any("hide" not in (tracker.get_attribute("class") or "").split() for tracker in trackers)

    def wait_for_status(self, elem_id: str, before: str) -> str:
        """After pressing a button: wait until the status box shows a new message and no event is running."""
        from selenium.common.exceptions import TimeoutException

        try:
            self.wait(lambda d: self.status(elem_id) not in ("", before) and not self.busy(elem_id))
        except TimeoutException:
            pass  # the caller checks the message it got
        return self.status(elem_id)

    # ------------------------------------------------------------------ what a person does

    def generate(self, class_name: str, num_images: int = 4, seed: int = 0) -> Dict:
        """Generate tab: pick a class, set the seed and the number of images, press Generate, wait for the
        images and the scale strips. Returns the status line, the images and the strips."""
        self.tab("Generate")
        chosen = self.select("gen-class", class_name)
        self.set_number("gen-seed", seed)
        self.set_number("gen-num", num_images)
        before = self.status("gen-status")
        self.find("#gen-button")[0].click()
        status = self.wait_for_status("gen-status", before)
        if not status.startswith(f"{num_images} image"):
            return {"class": chosen, "status": status, "images": [], "strips": []}
        images = self.loaded_images("#gen-gallery img", num_images)
        strips = self.loaded_images("#gen-strips img", num_images)
        return {"class": chosen, "status": status, "images": images, "strips": strips}

    def editor_zoom(self, elem_id: str) -> str:
        """The image editor's zoom read-out ("113%"), which changes when it fits a new image into view."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).filter(e => e.children.length === 0)"
            ".map(e => e.textContent.trim()).find(t => /^[0-9]+%$/.test(t)) || ''", f"#{elem_id} *"
        )

    def paint(self, elem_id: str, stroke=((-0.25, 0.0), (0.25, 0.0))):
        """Drag the brush along `stroke`, points relative to the canvas centre in fractions of its size (the brush
        draws straight segments between pointer events, so a few points make a band)."""
        from selenium.webdriver.common.action_chains import ActionChains

        brush = [b for b in self.find(f"#{elem_id} button") if (b.get_attribute("aria-label") or "") == "Brush"]
        if brush:
            brush[0].click()
        canvas = self.find(f"#{elem_id} canvas")[-1]
        width, height = canvas.size["width"], canvas.size["height"]
        points = [(round(x * width), round(y * height)) for x, y in stroke]
        actions = ActionChains(self.driver).move_to_element_with_offset(canvas, *points[0]).click_and_hold()
        for point in points[1:]:
            actions.move_to_element_with_offset(canvas, *point)
        actions.release().perform()

    def edit(
        self, image_path: str, class_name: str = "unconditional", region: Optional[str] = None, paint: bool = True
    ) -> Dict:
        """Edit tab: upload `image_path`, paint a stroke, pick the class (and a region), press Edit, wait for the
        input, mask, result and strip."""
        self.tab("Edit")
        upload = self.wait(lambda d: self.find("#edit-editor input[type=file]") or None)[0]
        zoom = self.editor_zoom("edit-editor")
        upload.send_keys(os.path.abspath(image_path))
        # The editor fits its view to the uploaded image once it has it: painting before that paints a blank canvas.
        self.wait(lambda d: self.editor_zoom("edit-editor") not in ("", zoom),
                  message="the uploaded image did not show")
        time.sleep(0.5)
        if paint:
            self.paint("edit-editor")
        if region is not None:
            [label for label in self.find("#edit-region label") if label.text.strip() == region][0].click()
        self.select("edit-class", class_name)
        before = self.status("edit-status")
        self.find("#edit-button")[0].click()
        out = {"status": self.wait_for_status("edit-status", before)}
        if out["status"].startswith("Regenerated"):
            for name in ("input", "mask", "result", "strip"):
                out[name] = self.loaded_images(f"#edit-{name} img", 1)[0]
        return out

    def screenshot(self, path: str, scroll_to: Optional[str] = None):
        from var_hf.file_utils import atomic_write

        if scroll_to is not None:
            self.driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", scroll_to)
        else:
            self.driver.execute_script("window.scrollTo(0, 0)")
        png = self.driver.get_screenshot_as_png()
        with atomic_write(path, "wb") as f:
            f.write(png)


__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "DemoPage",
    "LOOPBACK_HOSTS",
    "free_port",
    "missing_browser_requirements",
]
