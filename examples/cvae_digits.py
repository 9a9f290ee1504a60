"""Class-conditional MNIST: train the shipped conditional VAE (or reuse a run) and draw digits.

    python examples/cvae_digits.py                       # trains into runs/mnist_cvae, then draws
    python examples/cvae_digits.py --run runs/mnist_cvae # an existing run folder: draws only
    python examples/cvae_digits.py --set train.epochs=2  # a quick look (overrides the config)

Writes ``digits.png`` (one row per digit 0..9, z ~ p(z) drawn afresh for every image) and
``same_style.png`` (one z per column shared by all ten rows: each column is one handwriting style
written as 0 to 9) into ``--out-dir``. The same grids come from the CLI:
``pyro-vae generate RUN --digit all [--same-style] --n 10 --out FILE.png``.
"""

import argparse
from pathlib import Path

from pyro_vae import config
from pyro_vae.run import load_run
from pyro_vae.generate import draw
from pyro_vae.plots import image_grid
from pyro_vae.run import train_run

CONFIG = Path(__file__).resolve().parent / "configs" / "mnist_cvae.toml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/mnist_cvae"), help="run folder to reuse, or to train into")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for training")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where to write digits.png and same_style.png")
    parser.add_argument("--n", type=int, default=10, help="images per digit (columns)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not (args.run / "checkpoint.pt").exists():
        train_run(config.load(CONFIG, args.overrides), args.run)
    elif args.overrides:
        parser.error(f"{args.run} is already trained, so --set would be ignored; choose a new --run to train with it")
    _, vae, payload = load_run(args.run)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, same_style in (("digits.png", False), ("same_style.png", True)):
        images, _, nrow = draw(vae, args.n, digit="all", same_style=same_style, seed=args.seed)
        image_grid(args.out_dir / name, images, payload["image_shape"], nrow)
        print(f"wrote {args.out_dir / name}")


if __name__ == "__main__":
    main()
