"""`var-hf demo` used as a person uses it: the command serves the default model on a free local port, and a real
headless chromium picks a class, presses Generate, sees the images and their scale strips, meets an error message,
uploads an image, paints over it and edits it. The page must reach no host but the loopback address, and the demo
must write nothing outside its temporary folder, which is gone once it stops.

Needs gradio (`pip install "var_hf[demo]"`), selenium, and Debian's chromium + chromedriver
(`apt-get install -y chromium chromium-driver`); skipped with the reason otherwise.
"""

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import DEFAULT_MODEL, VARPipeline
from var_hf.demo.app import enlarge
from var_hf.demo.browser import LOOPBACK_HOSTS, DemoPage, free_port, missing_browser_requirements
from var_hf.scale_strip import make_scale_strip, scale_labels

try:
    import gradio  # noqa: F401

    _missing = missing_browser_requirements()
except ImportError:
    _missing = 'gradio is not installed (pip install "var_hf[demo]")'

pytestmark = pytest.mark.skipif(_missing is not None, reason=f"browser test: {_missing}")

SERVER_START_TIMEOUT = 180  # importing torch and gradio on a busy 2-core machine


class DemoServer:
    """`python -m var_hf.commands.demo --port P --num-threads 1` in an empty working folder, with its own HOME and
    TMPDIR (one thread: on a small busy machine, oversubscribed threads make the tiny model many times slower)."""

    def __init__(self, root):
        self.cwd, self.home, self.tmp = (root / name for name in ("cwd", "home", "tmp"))
        for folder in (self.cwd, self.home, self.tmp):
            folder.mkdir()
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_")}
        env.update(HOME=str(self.home), TMPDIR=str(self.tmp), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "var_hf.commands.demo", "--port", str(self.port), "--num-threads", "1"], cwd=self.cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output, self.url = [], None
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            if self.url is None and "serving" in line and "http://" in line:
                self.url = line[line.index("http://"):].split()[0]
                self.ready.set()
        self.ready.set()

    def wait_ready(self):
        self.ready.wait(SERVER_START_TIMEOUT)
        assert self.url is not None, f"var-hf demo did not start:\n{''.join(self.output)[-3000:]}"
        return self.url

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # as `kill` or a service manager stops it (Ctrl+C takes the same path)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                pytest.fail(f"var-hf demo did not stop on SIGTERM:\n{''.join(self.output)[-3000:]}")
        return self.process.returncode


@pytest.fixture
def server(tmp_path):
    server = DemoServer(tmp_path)
    yield server
    server.stop()


def _fetch_image(url: str) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(PIL.Image.open(response).convert("RGB"))


def test_generate_and_edit_in_a_real_browser(server, tmp_path):
    pipe = VARPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    patch_nums = pipe.scheduler.config.patch_nums
    res = pipe.vqvae.config.image_size
    strip_size = make_scale_strip([PIL.Image.new("RGB", (res, res))] * len(patch_nums), labels=scale_labels(patch_nums)).size
    garment = pipe(class_labels="Bag", generator=torch.Generator().manual_seed(1)).images[0]
    garment_path = tmp_path / "bag.png"
    garment.resize((8 * res, 8 * res), PIL.Image.NEAREST).save(garment_path)
    url = server.wait_ready()

    with DemoPage(url) as page:
        page.open()

        # Generate: class by name (typed into the searchable dropdown), seed 0, three images.
        result = page.generate("Sneak", num_images=3, seed=0)
        assert result["class"] == "Sneaker"
        assert result["status"].startswith("3 images of Sneaker"), result["status"]
        assert len(result["images"]) == 3 and len(result["strips"]) == 3
        assert all((im["width"], im["height"]) == (res, res) for im in result["images"])
        # Each strip holds K estimates: its size is that of a K-tile strip.
        assert all((s["width"], s["height"]) == strip_size for s in result["strips"]), (result["strips"], strip_size)
        # The page shows the pipeline's own images for these settings: the sliders start at the model's defaults.
        expected = pipe(class_labels="Sneaker", num_images_per_label=3,
                        generator=torch.Generator().manual_seed(0)).images
        for shown, image in zip(result["images"], expected):
            assert np.array_equal(_fetch_image(shown["src"]), np.asarray(image))

        # An error is a readable line in the page: Edit before any image was uploaded.
        page.tab("Edit")
        page.find("#edit-button")[0].click()
        status = page.wait_for_status("edit-status", "")
        assert status.startswith("Error: Upload an image"), status
        assert "Traceback" not in page.driver.page_source

        # Edit: upload, paint a band, regenerate it as a bag.
        edit = page.edit(str(garment_path), "Bag")
        assert edit["status"].startswith("Regenerated"), edit["status"]
        assert "as Bag" in edit["status"]
        assert (edit["strip"]["width"], edit["strip"]["height"]) == strip_size
        # The input shown is the uploaded image as the pipeline resizes and crops it (shown enlarged).
        seen = pipe.image_processor.postprocess(
            pipe.image_processor.preprocess(PIL.Image.open(garment_path).convert("RGB"), height=res, width=res,
                                            resize_mode="crop"), output_type="pil")[0]
        assert np.array_equal(_fetch_image(edit["input"]["src"]), np.asarray(enlarge(seen)))
        mask = _fetch_image(edit["mask"]["src"])[..., 0] > 127
        assert 0 < mask.mean() < 0.6, "the painted band should be white in the mask, the rest black"
        result_image = _fetch_image(edit["result"]["src"])
        assert result_image.shape[:2] == mask.shape

        hosts = page.contacted_hosts()
        assert hosts and hosts <= LOOPBACK_HOSTS, f"the page contacted {hosts - LOOPBACK_HOSTS}"

    # Stopping it leaves nothing behind: no files in its working folder or HOME, its temporary folder removed.
    assert server.stop() == 0, "".join(server.output)[-3000:]
    assert os.listdir(server.cwd) == [], os.listdir(server.cwd)
    leftovers = [name for name in os.listdir(server.tmp) if name.startswith("var-hf-demo-")]
    assert leftovers == [], leftovers
    written = [os.path.join(dirpath, name) for dirpath, _, names in os.walk(server.home) for name in names]
    assert written == [], written
