"""Screenshots of both tabs of `var-hf demo` for docs/demo.md, taken in a headless chromium as a person uses the page.

    python docs/scripts/screenshot_demo.py                       # the bundled model -> docs/images/demo_*.png
    python docs/scripts/screenshot_demo.py --model ./var-d16 --class "golden retriever" --out /tmp/shots

Needs `pip install "var_hf[demo]" selenium` and Debian's `chromium` + `chromium-driver`. The demo is served on a free
loopback port for the duration of the run; the page cannot reach any other host.
"""

import argparse
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "images")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--class", dest="class_name", default="Sneaker", help="class for the Generate tab")
    parser.add_argument("--edit-class", default="Bag", help="class of the image edited in the Edit tab")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for demo_generate.png and demo_edit.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1250)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from var_hf.demo.browser import DemoPage, free_port, missing_browser_requirements

    missing = missing_browser_requirements()
    if missing:
        print(f"screenshot_demo: {missing}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    from var_hf import DEFAULT_MODEL
    from var_hf.demo.app import example_image, launch_demo, load_pipeline

    running = launch_demo(model=args.model, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    try:
        with tempfile.TemporaryDirectory() as scratch, DemoPage(running.url, args.width, args.height) as page:
            page.open()
            generated = page.generate(args.class_name, num_images=args.num_images, seed=args.seed)
            if not generated["images"]:
                raise RuntimeError(f"Generate failed: {generated['status']}")
            page.screenshot(os.path.join(args.out, "demo_generate.png"))
            print(f"Generate: {generated['status']}")

            # The Edit tab on one of the model's own samples, enlarged so it is comfortable to paint on.
            pipe = load_pipeline(args.model or DEFAULT_MODEL, "cpu")
            pipe.set_progress_bar_config(disable=True)
            image_path = os.path.join(scratch, "example.png")
            example_image(pipe, args.edit_class, seed=args.seed + 1).save(image_path)
            edited = page.edit(image_path, args.edit_class)
            if not edited["status"].startswith("Regenerated"):
                raise RuntimeError(f"Edit failed: {edited['status']}")
            page.screenshot(os.path.join(args.out, "demo_edit.png"))
            print(f"Edit: {edited['status']}")
    finally:
        running.close()
    print(f"wrote {os.path.join(args.out, 'demo_generate.png')} and {os.path.join(args.out, 'demo_edit.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
