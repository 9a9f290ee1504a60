"""Where a trained run's gap log p(x) - ELBO comes from (Cremer, Li & Duvenaud 2018, "Inference
suboptimality in variational autoencoders"). For each test image x, decoder and prior fixed:

    log p(x) - ELBO(q(z|x)) = [log p(x) - ELBO(q*_x)] + [ELBO(q*_x) - ELBO(q(z|x))]
                            =   approximation gap     +       amortization gap

q(z|x) is the run's encoder (any family). q*_x is the best diagonal Gaussian for x alone: its
mean and log standard deviation are fitted per image by Adam (learning rate annealed to zero) on
that image's reparameterized ELBO, starting from the encoder's per-dimension moments. The
approximation gap is what the diagonal family itself costs at this decoder, the most that any
richer family (full_rank, iaf) with a perfect encoder could take off the gap; the amortization
gap is what one shared encoder costs.
For a run trained with another family the same columns say how far that run's posteriors are from
any diagonal Gaussian: a negative amortization gap means the run's q beats the best per-image
diagonal Gaussian, because its decoder has come to rely on what the family can express.

log p(x) is estimated by importance sampling from the defensive mixture 1/2 q(z|x) + 1/2 q*_x, half
of the K draws from each (unbiased for p(x) like either proposal alone, and never much worse than
the better of the two). Where the posterior has heavier or wider tails than both proposals (a
correlated posterior under diagonal proposals: PSIS k-hat above 0.7, reported) the estimate reads
low, and so do the gap and the approximation gap, by the same amount; the amortization gap is a
difference of ELBOs and is not affected. ELBOs are averages over K draws. Everything is in nats
per image, means over the images with their standard errors.

    python benchmarks/gap_split.py RUN [--limit 1000] [--steps 1000] [--num-samples 1000]
"""

import argparse
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae.marginal import KHAT_TRUST, pareto_khat
from pyro_vae.runfolder import load_split


def log_joint(vae, x, y, z):
    """log p(x, z) (given y for a conditional VAE) of the run's Pyro model at draws z of shape
    (S, N, D), read off the model's trace with its latent site set to z: shape (S, N)."""
    # registration off: the parameters are frozen, and none is to enter Pyro's param store
    with vae.parameters_registered(False), pyro.plate("particles", z.shape[0], dim=-2):
        trace = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x, y)
    trace.compute_log_prob()
    return sum(site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample")


def fit_per_image(vae, x, y, steps, samples, lr):
    """The best diagonal Gaussian for each image alone, from the encoder's moments."""
    loc, scale = vae.encode(x, y)
    loc, log_scale = loc.clone().requires_grad_(), scale.log().clone().requires_grad_()
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    # annealed to zero, so that the last iterate is the optimum rather than a point Adam's noise jitters around
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for step in range(steps):
        q = dist.Normal(loc, log_scale.exp()).to_event(1)
        z = q.rsample((samples,))
        loss = -(log_joint(vae, x, y, z) - q.log_prob(z)).mean(0).sum()  # images are independent
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % (steps // 5 or 1) == 0:
            print(f"  step {step + 1:5d}: mean per-image ELBO of q* over {samples} draws {-loss.item() / len(x):9.3f}", flush=True)
    return dist.Normal(loc.detach(), log_scale.detach().exp()).to_event(1)


@torch.no_grad()
def scores(vae, x, y, q, q_star, num_samples, chunk):
    """Per image: ELBO under q, ELBO under q*, and log p(x) from the mixture proposal with the
    PSIS k-hat of its weights."""
    elbo_q, elbo_star, log_w = [], [], []
    for _ in range(num_samples // (2 * chunk)):
        for proposal, elbos in ((q, elbo_q), (q_star, elbo_star)):
            z = proposal.sample((chunk,))
            joint = log_joint(vae, x, y, z)
            elbos.append(joint - proposal.log_prob(z))
            mixture = torch.logaddexp(q.log_prob(z), q_star.log_prob(z)) - math.log(2)
            log_w.append(joint - mixture)
    log_w = torch.cat(log_w)
    log_px = torch.logsumexp(log_w, 0) - math.log(len(log_w))
    return torch.cat(elbo_q).mean(0), torch.cat(elbo_star).mean(0), log_px, pareto_khat(log_w)


def mean_and_stderr(values):
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=1000, help="the first N test images")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps fitting q* per image")
    parser.add_argument("--samples", type=int, default=16, help="draws per image per fitting step")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--num-samples", type=int, default=1000, help="K, draws per image for the ELBOs and log p(x)")
    parser.add_argument("--batch-size", type=int, default=250, help="images fitted and scored together")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg, vae, _, test = load_split(args.run, "test", args.limit)
    for p in vae.parameters():
        p.requires_grad_(False)
    parts = []
    for start in range(0, len(test.x), args.batch_size):
        x = test.x[start:start + args.batch_size]
        y = None if test.y is None else test.y[start:start + args.batch_size]
        print(f"images {start}-{start + len(x) - 1}:", flush=True)
        q_star = fit_per_image(vae, x, y, args.steps, args.samples, args.lr)
        parts.append(scores(vae, x, y, vae.posterior(x, y), q_star, args.num_samples, chunk=50))
    elbo_q, elbo_star, log_px, khat = (torch.cat(column) for column in zip(*parts))
    rows = [("log p(x) (mixture proposal)", log_px), (f"ELBO, q(z|x) ({vae.family.name})", elbo_q),
            ("ELBO, q*_x (diagonal, per image)", elbo_star), ("gap = log p(x) - ELBO(q)", log_px - elbo_q),
            ("  approximation gap", log_px - elbo_star), ("  amortization gap", elbo_star - elbo_q)]
    print(f"\n{args.run}: {len(log_px)} test images, K = {args.num_samples}, q* from {args.steps} Adam steps of {args.samples} draws")
    print(f"{'':34} {'mean':>9} {'std. err.':>10}   (nats per image)")
    for name, values in rows:
        print(f"{name:34} {mean_and_stderr(values)[0]:9.3f} {mean_and_stderr(values)[1]:10.3f}")
    if vae.family.name == "diagonal":
        share = (log_px - elbo_star).mean() / (log_px - elbo_q).mean()
        print(f"approximation gap / gap: {share.item():.0%}: the most a richer family could take off this gap at this decoder")
    else:
        print(f"ELBO(q) - ELBO(q*) = {(elbo_q - elbo_star).mean().item():+.2f} nats: positive where the run's {vae.family.name} "
              "q(z|x) beats the best diagonal Gaussian fitted to each image")
    print(f"images with k-hat > {KHAT_TRUST} for the mixture's weights: {(khat > KHAT_TRUST).double().mean().item():.1%} "
          "(there log p(x) reads low, and both gaps with it by the same amount)")


if __name__ == "__main__":
    main()
