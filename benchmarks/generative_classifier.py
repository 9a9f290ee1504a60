"""Does a semi-supervised run's decoder tell the classes apart, and rightly? The generative
classifier argmax_y L(x, y) (the ELBO of each class, averaged over draws of z ~ q(z|x, y)) beside
the run's classifier q(y|x), on the run's test images as it saw them.

    python benchmarks/generative_classifier.py RUN [--limit 1000] [--draws 10] [--seed 0]

Prints both accuracies and the mean gap between the best class's ELBO and the median class's:
a large gap means U(x)'s weights q(y|x) are pulled to argmax_y L(x, y), so the unlabelled images
teach the classifier whatever that generative classifier believes.
"""

import argparse

import torch

from pyro_vae.networks import call_net
from pyro_vae.runfolder import load_split


@torch.no_grad()
def class_elbos(vae, x, draws):
    """(N, C): the ELBO of each image under each class, averaged over ``draws`` draws of z."""
    columns = []
    for c in range(vae.num_classes):
        y = torch.full((len(x),), c, dtype=torch.long)
        q = vae.posterior(x, y)
        z = q.sample((draws,))
        log_px = vae.likelihood(call_net(vae.decoder, z, vae.onehot(y).expand(draws, -1, -1))).log_prob(x)
        columns.append((log_px + vae.prior_distribution().log_prob(z) - q.log_prob(z)).mean(0))
    return torch.stack(columns, -1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, vae, _, test = load_split(args.run_dir, "test", args.limit)
    if not vae.semi_supervised:
        raise SystemExit(f"error: {args.run_dir} is not a semi-supervised run (data.labelled > 0)")
    torch.manual_seed(args.seed)
    vae.eval()
    elbos = class_elbos(vae, test.x, args.draws)
    generative = (elbos.argmax(-1) == test.y).float().mean().item()
    classifier = (vae.classify(test.x).argmax(-1) == test.y).float().mean().item()
    gap = (elbos.max(-1).values - elbos.median(-1).values).mean().item()
    print(f"{args.run_dir}: {len(test)} test images, {args.draws} draws of z per class")
    print(f"generative classifier argmax_y L(x, y): accuracy {generative:.3f}")
    print(f"classifier q(y|x):                      accuracy {classifier:.3f}")
    print(f"best class's ELBO above the median class's: {gap:.1f} nats on average")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
