"""The baseline the benchmarks compare against: the same VAE written in plain PyTorch, no Pyro."""

import torch

IWAE_PAPER_NET = {"type": "mlp", "hidden": [200, 200], "activation": "tanh"}


def plain_elbo(encoder, decoder, x):
    """Single-sample reparameterized ELBO summed over the batch, Bernoulli likelihood, N(0, I)
    prior: log p(x|z) + log p(z) - log q(z|x), the same Monte Carlo estimate Trace_ELBO forms."""
    loc, scale = encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    return log_px_z + log_pz - log_qz


def plain_step(encoder, decoder, optimizer):
    def step(x):
        loss = -plain_elbo(encoder, decoder, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step
