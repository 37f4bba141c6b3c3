"""Not a measurement: makes the README's screenshot of the served page (``docs/serve_page.png``).

    python benchmarks/serve_screenshot.py ../shared/datasets/raccoon/images/raccoon-1.jpg --out docs/serve_page.png

Serves ``--weights`` (default: a random-init Lite0 whose class head is spread out so that the
scores range over 0..1; its boxes mean nothing) on a free 127.0.0.1 port, opens the page in
headless Chromium (Debian's chromium + chromium-driver, via selenium), uploads the photo, moves
the score slider and saves a screenshot.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_weights(path: Path) -> None:
    import torch

    import efficientdet

    torch.manual_seed(0)
    model = efficientdet.create_model("efficientdet_lite0", pretrained_backbone=False, num_classes=3,
                                      class_names=["raccoon", "dog", "cat"])  # fmt: skip
    with torch.no_grad():
        model.class_head.predict.pw.weight.normal_(0.0, 10.0)
        model.class_head.predict.pw.bias.fill_(-2.5)
    efficientdet.save_model(model, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo")
    p.add_argument("--weights", default=None)
    p.add_argument("--out", default="docs/serve_page.png")
    p.add_argument("--threshold", type=float, default=0.8, help="where to put the slider")
    p.add_argument("--size", default="1000,900", help="window width,height")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else Path(tmp) / "tiny.safetensors"
        if not args.weights:
            tiny_weights(weights)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights),
                                   "--port", str(port), "--device", "cpu"], env={**os.environ, "PYTHONPATH": str(SRC)})  # fmt: skip
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={args.size}",
                    "--force-device-scale-factor=1"):  # fmt: skip
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            for _ in range(300):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            driver.get(f"http://127.0.0.1:{port}/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "efficientdet" in d.find_element("id", "model-name").text)
            driver.find_element("id", "file").send_keys(str(Path(args.photo).resolve()))
            wait.until(lambda d: d.execute_script("return document.body.dataset.state === 'done'"))
            driver.execute_script("const s = document.getElementById('threshold'); s.step = 'any'; s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", args.threshold)  # fmt: skip
            driver.save_screenshot(args.out)
            print(f"wrote {args.out}")
        finally:
            driver.quit()
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
