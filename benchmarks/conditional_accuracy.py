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

from pyro_vae.data import pictures
from pyro_vae.errors import UserError
from pyro_vae.generate import draw
from pyro_vae.runfolder import feature_map, load_run


def conditional_accuracy(run_dir, classifier, n=100, seed=0):
    """``(per-class accuracy (C,), overall accuracy)`` over ``n`` prior draws per class of the
    run in ``run_dir`` (a run on ``data.features`` drawn as images through its feature run)."""
    cfg, vae, payload = load_run(run_dir)
    if vae.num_classes is None:
        raise UserError(f"{run_dir} is not a conditional run (train with model.conditional = true)")
    images, labels, _ = draw(vae.eval(), n, digit="all", seed=seed)
    images, _ = pictures(images, tuple(payload["image_shape"]), feature_map(cfg))
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
        per_class, overall = conditional_accuracy(args.run_dir, load_classifier(args.classifier), args.n, args.seed)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(f"conditional accuracy of {args.run_dir} ({args.n} prior draws per digit, seed {args.seed})")
    print("digit    " + " ".join(f"{d:>6d}" for d in range(len(per_class))) + "   overall")
    print("accuracy " + " ".join(f"{a:6.1%}" for a in per_class.tolist()) + f"   {overall:.1%}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
