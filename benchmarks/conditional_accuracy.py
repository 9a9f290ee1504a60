"""Conditional accuracy of a conditional VAE run: do the digits it draws show the class asked for?

    python benchmarks/classifier.py                      # once: trains benchmarks/out/classifier.pt
    python benchmarks/conditional_accuracy.py RUN_DIR [--classifier PATH] [--n 100] [--seed 0]

For every class y in 0..9 it draws ``--n`` images E[x | z, y] with z ~ p(z) (the same draw as
``pyro-vae generate RUN_DIR --digit all``), classifies them with the MNIST classifier and prints
the fraction assigned to y, per digit and overall (1000 images with the defaults).
"""

import argparse
import sys
from pathlib import Path

import torch
from classifier import DEFAULT_PATH, load_classifier, predict

from pyro_vae.runfolder import load_run
from pyro_vae.errors import UserError
from pyro_vae.generate import draw


def conditional_accuracy(vae, classifier, n=100, seed=0):
    """``(per-class accuracy (C,), overall accuracy)`` over ``n`` prior draws per class."""
    images, labels, _ = draw(vae, n, digit="all", seed=seed)
    hits = (predict(classifier, images.cpu()) == labels).float()
    return hits.reshape(vae.num_classes, n).mean(1), hits.mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--classifier", type=Path, default=DEFAULT_PATH, help=f"state_dict from benchmarks/classifier.py (default {DEFAULT_PATH})")
    parser.add_argument("--n", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.classifier.exists():
        sys.exit(f"no classifier at {args.classifier}; train it first with `python benchmarks/classifier.py --out {args.classifier}`")
    try:
        _, vae, _ = load_run(args.run_dir)
    except UserError as e:
        sys.exit(f"error: {e}")
    if vae.num_classes is None:
        sys.exit(f"error: {args.run_dir} is not a conditional run (train with model.conditional = true)")
    per_class, overall = conditional_accuracy(vae.eval(), load_classifier(args.classifier), args.n, args.seed)
    print(f"conditional accuracy of {args.run_dir} ({args.n} prior draws per digit, seed {args.seed})")
    print("digit    " + " ".join(f"{d:>6d}" for d in range(len(per_class))) + "   overall")
    print("accuracy " + " ".join(f"{a:6.1%}" for a in per_class.tolist()) + f"   {overall:.1%}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
