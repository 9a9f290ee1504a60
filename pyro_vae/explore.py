r"""`pyro-vae encode` and `pyro-vae explore`: what a trained run's latent space holds.

``encode`` writes the mean and standard deviation of q(z|x) for every image of a split. ``explore``
draws the latent space (``latent_map.png``, ``interpolations.png``, ``traversals.png`` and, for a
2-D latent, ``manifold.png``) and measures how much of it the model uses:

* active units (Burda et al. 2015): dimension j is active when
  :math:`\mathrm{Cov}_x(\mathbb{E}_{q(z|x)}[z_j]) > 0.01` over the test set;
* per-dimension KL: :math:`\frac1N \sum_i \mathrm{KL}(q(z_j|x_i) \,\|\, p_j(z_j))` with
  :math:`p_j` the prior's marginal for dimension j. In closed form for a diagonal Gaussian prior
  (``normal``, ``learned_normal``); otherwise a Monte Carlo average over z ~ q(z|x) of
  :math:`\log q(z_j|x) - \log p_j(z_j)` with its standard error. For mixtures of diagonal
  Gaussians (``mixture``, ``vamp``) and factorized priors the marginal density is exact; for any
  other prior it is a Gaussian kernel density estimate from prior samples (``kl_method`` says
  which). For a non-factorized prior the per-dimension terms need not sum to the full KL.
  q(z_j|x) is the Gaussian with q's per-dimension mean and standard deviation (``VAE.encode``):
  exact for the diagonal and full-rank families, an approximation for a flow, whose marginals have
  no formula (``posterior_marginals`` says which).

A hierarchical VAE (``model.layers``) is measured layer by layer (``layers`` in the summary, and
Burda et al.'s "16+5" as ``active_units_by_layer``; ``active_units`` is then the total): the
posterior means of a layer above z are averages over draws of the layers below it
(``VAE.encode_layers``), and dimension j of layer l carries the Monte Carlo average over
z ~ q(z, z2, ... | x) of :math:`\log q(z_{l,j} | z_{l-1}) - \log p(z_{l,j} | z_{l+1})` (the
prior's marginal at the top), terms that add up, over every dimension of every layer, to
KL(q(z, z2, ... | x) || p(z, z2, ...)) for diagonal families and a factorized prior. The figures
live in the top layer, the prior's space, decoded down through each layer's conditional mean.
"""

import io
import json
import math
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

from . import noise, records
from .errors import UserError
from .features import ACTIVE_THRESHOLD, active_units
from .files import atomic_write_bytes
from .networks import call_net
from .runfolder import load_data, load_split

KL_SAMPLES = 16  # z draws per datum for a Monte Carlo KL
KDE_SAMPLES = 2000  # prior draws behind a kernel density estimate of its marginals
ELEMENTS = 1 << 24  # the largest intermediate tensor a batch may build (64 MiB of floats)
MAX_TRAVERSED = 8
QUANTILE_LEVELS = 9  # columns of traversals.png
MANIFOLD_SIDE = 20


def batches(split, batch_size):
    return (split[i : i + batch_size] for i in range(0, len(split), batch_size))


def encode_layers_split(vae, split, batch_size=200):
    """``{site: (mean, std)}``, (N, dim) each, of every layer's marginal under q for every datum
    of ``split``, bottom-up (:meth:`VAE.encode_layers`)."""
    parts = [vae.encode_layers(batch.x, batch.y) for batch in batches(split, batch_size)]
    return {site: tuple(torch.cat([part[site][i] for part in parts]) for i in range(2)) for site in vae.latent_sites}


def encode_run(run_dir, out, split="test", limit=None):
    """Write ``loc``, ``scale`` (N, latent_dim) float32 (and for each layer above z, ``loc_z2``,
    ``scale_z2``, ...), where the data have labels ``labels`` (N,) int64, and for a
    semi-supervised run the classifier's class probabilities ``y_probs`` (N, C) float32, to the
    ``.npz`` file ``out``."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz, got {out.name}")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist; create it or choose another --out")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {limit} (leave it out for the whole split)")
    _, vae, _, chosen = load_split(run_dir, split, limit or 0)
    arrays = {}
    for site, (loc, scale) in encode_layers_split(vae, chosen).items():  # the bottom layer under today's keys
        suffix = "" if site == "z" else f"_{site}"
        arrays[f"loc{suffix}"], arrays[f"scale{suffix}"] = loc.numpy().astype(np.float32), scale.numpy().astype(np.float32)
    if chosen.y is not None:
        arrays["labels"] = chosen.y.numpy().astype(np.int64)
    if vae.semi_supervised:  # the classifier's q(y|x), (N, C)
        arrays["y_probs"] = torch.cat([vae.classify(chosen.x[i : i + 1000]) for i in range(0, len(chosen), 1000)]).numpy().astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    return arrays


def marginal_log_density(prior, num_samples=KDE_SAMPLES):
    """``(log_density, method)``: ``log_density(z)`` maps z (..., D) to the log density of each
    coordinate under the prior's 1-D marginal, (..., D)."""
    if isinstance(prior, dist.Independent) and prior.reinterpreted_batch_ndims == 1:
        return prior.base_dist.log_prob, "monte_carlo"
    if isinstance(prior, dist.MixtureSameFamily) and isinstance(prior.component_distribution, dist.Independent):
        # a mixture of factorized components: each marginal is the 1-D mixture with the same weights
        log_weights = prior.mixture_distribution.logits.log_softmax(-1).unsqueeze(-1)
        components = prior.component_distribution.base_dist
        return lambda z: (components.log_prob(z.unsqueeze(-2)) + log_weights).logsumexp(-2), "monte_carlo"
    draws = prior.sample((num_samples,))  # (M, D)
    # Scott's rule per dimension: a smooth, slightly widened stand-in for a marginal with no formula
    bandwidth = 1.06 * draws.std(0) * num_samples ** -0.2
    kernels = dist.Normal(draws, bandwidth)
    return lambda z: kernels.log_prob(z.unsqueeze(-2)).logsumexp(-2) - math.log(num_samples), "monte_carlo_kde"


def monte_carlo_kl(loc, scale, log_marginal, num_samples=KL_SAMPLES, seed=0, per_sample_elements=1):
    """``(kl, stderr)`` (D,): the average over the data of KL(q(z_j|x) || p_j), each datum's KL
    estimated from ``num_samples`` draws of z; ``stderr`` is the Monte Carlo standard error (the
    data held fixed). ``per_sample_elements`` sizes the batches to what ``log_marginal`` builds."""
    n, d = loc.shape
    generator = torch.Generator().manual_seed(seed)
    batch = max(1, ELEMENTS // (num_samples * d * per_sample_elements))
    means, variances = [], []
    for i in range(0, n, batch):
        q = dist.Normal(loc[i : i + batch], scale[i : i + batch])
        eps = torch.randn((num_samples, *q.loc.shape), generator=generator)
        z = q.loc + q.scale * eps
        terms = q.log_prob(z) - log_marginal(z)  # (S, B, D)
        means.append(terms.mean(0))
        variances.append(terms.var(0) if num_samples > 1 else torch.full_like(terms[0], float("nan")))
    means, variances = torch.cat(means), torch.cat(variances)
    return means.mean(0), (variances.sum(0) / num_samples).sqrt() / n


def kl_per_dim(prior, loc, scale, num_samples=KL_SAMPLES, seed=0):
    """``(kl (D,), stderr (D,) or None, method)`` for the prior distribution ``prior``; see the
    module docstring for what each method is."""
    if isinstance(prior, dist.Independent) and isinstance(prior.base_dist, dist.Normal):
        kl = kl_divergence(dist.Normal(loc, scale), prior.base_dist)
        return kl.mean(0), None, "closed_form"
    log_marginal, method = marginal_log_density(prior)
    if isinstance(prior, dist.MixtureSameFamily):
        width = prior.mixture_distribution.logits.shape[-1]
    else:
        width = KDE_SAMPLES if method == "monte_carlo_kde" else 1
    kl, stderr = monte_carlo_kl(loc, scale, log_marginal, num_samples, seed, per_sample_elements=width)
    return kl, stderr, method


def stack_kl_per_dim(vae, split, num_samples=KL_SAMPLES, seed=0, batch_size=200):
    """``({site: (kl (D,), stderr (D,))}, method)`` of a hierarchical VAE: per dimension of each
    layer, the average over the data of the Monte Carlo mean over ``num_samples`` draws of the whole
    chain z ~ q(z|x), z2 ~ q(z2|z), ... of log q(z_l,j | z_{l-1}) - log p(z_l,j | z_{l+1}), the
    prior's marginal at the top; q's per-dimension density is the Gaussian with the family's
    moments (exact for the diagonal family). ``stderr`` is the Monte Carlo standard error."""
    prior = vae.prior_distribution()
    log_marginal, method = marginal_log_density(prior)
    width = prior.mixture_distribution.logits.shape[-1] if isinstance(prior, dist.MixtureSameFamily) else (
        KDE_SAMPLES if method == "monte_carlo_kde" else 1)
    batch_size = max(1, min(batch_size, ELEMENTS // (num_samples * max(vae.latent_dim, vae.top_dim) * width)))
    sums = {site: [] for site in vae.latent_sites}
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch in batches(split, batch_size):
            y_onehot = vae.onehot(batch.y)
            encoded, family, parent = call_net(vae.encoder, batch.x, y_onehot), vae.family, None
            draws = []
            for level in range(len(vae.latent_sites)):
                if level:
                    layer = vae.layers[level - 1]
                    encoded, family = layer.encoded(parent, y_onehot), layer.family
                z = family(encoded).sample((num_samples,) if parent is None else ())
                draws.append((z, dist.Normal(*family.moments(encoded))))
                parent = z
            for level, (site, (z, q)) in enumerate(zip(vae.latent_sites, draws)):
                if level + 1 < len(draws):
                    log_p = vae.layers[level].conditional(draws[level + 1][0], y_onehot).base_dist.log_prob(z)
                else:
                    log_p = log_marginal(z)
                sums[site].append(q.log_prob(z) - log_p)  # (S, B, D)
    result = {}
    for site, parts in sums.items():
        terms = torch.cat(parts, dim=1)
        n = terms.shape[1]
        result[site] = terms.mean((0, 1)), (terms.var(0).sum(0) / num_samples).sqrt() / n
    return result, method


def prior_quantiles(prior, levels, num_samples=10000):
    """(L, D): each dimension's prior-marginal quantiles at ``levels``; exact for a diagonal
    Gaussian, else empirical quantiles of prior samples."""
    if isinstance(prior, dist.Independent) and isinstance(prior.base_dist, dist.Normal):
        return prior.base_dist.icdf(levels.unsqueeze(-1))
    return torch.quantile(prior.sample((num_samples,)), levels, dim=0)


# -- the pictures ---------------------------------------------------------------------------
def project_2d(loc):
    """``(points (N, 2), axis names)``: the latent itself for two dimensions, else its first two
    principal components (the axis names say which, and how much variance each holds)."""
    d = loc.shape[1]
    if d == 2:
        return loc, ("z[0] (posterior mean)", "z[1] (posterior mean)")
    if d == 1:
        return torch.cat([loc, torch.zeros_like(loc)], 1), ("z[0] (posterior mean)", "(none: the latent has one dimension)")
    if len(loc) < 2:  # one image has no spread to find principal components in
        return loc[:, :2], ("z[0] (posterior mean)", "z[1] (posterior mean)")
    centred = loc - loc.mean(0)
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    share = 100 * singular**2 / (singular**2).sum()
    names = tuple(f"principal component {k + 1} of the posterior means ({share[k]:.0f}% of their variance)" for k in range(2))
    return centred @ vt[:2].T, names


def interpolation_pairs(split, rows, conditional):
    """Index pairs of test images to join: consecutive pairs, or for a conditional VAE each image
    with the next one of the same label (the path then varies only the style z carries)."""
    n = len(split)
    if not conditional:
        return [(2 * r, 2 * r + 1) for r in range(min(rows, n // 2))]
    pairs = []
    for i in range(n):
        later = (split.y[i + 1 :] == split.y[i]).nonzero()
        if len(later):
            pairs.append((i, i + 1 + int(later[0])))
        if len(pairs) == rows:
            break
    return pairs


def explore_run(run_dir, out=None, json_summary=False, seed=0):
    """Draw the latent-space figures of the run in ``run_dir`` into ``out`` (default: the run
    folder), print the active units and per-dimension KL, and return them as a dict."""
    from . import plots  # matplotlib and torchvision: only where figures are drawn

    noise.check_seed(seed, "--seed")
    run_dir = Path(run_dir)
    out = run_dir if out is None else Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the figures")
    _, vae, payload, ds = load_data(run_dir)
    test, image_shape = ds.test, ds.picture_shape

    def show(x):  # data rows or decoder means as images (a features run's through its feature run)
        return ds.pictures(x)[0]
    conditional = vae.num_classes is not None
    torch.manual_seed(seed)
    codes = encode_layers_split(vae, test)
    with torch.no_grad():
        prior = vae.prior_distribution()
        layers = []
        if len(codes) == 1:
            kl, stderr, method = kl_per_dim(prior, *codes["z"], seed=seed)
            by_site = {"z": (kl, stderr)}
        else:
            by_site, method = stack_kl_per_dim(vae, test, seed=seed)
        for site, (layer_loc, _) in codes.items():
            count, variances = active_units(layer_loc)
            kl, stderr = by_site[site]
            layers.append({"site": site, "latent_dim": layer_loc.shape[1], "active_units": count, "posterior_mean_variance": variances,
                           "kl_per_dim": kl, "kl_stderr": stderr})
        # the figures live in the prior's space, the top layer (the only one, for a one-layer VAE)
        top = layers[-1]
        loc = codes[vae.top_site][0]
        kl = top["kl_per_dim"]
        drawn = kl.argsort(descending=True)[:MAX_TRAVERSED].tolist()
        site = vae.top_site

        def decode(z, y):
            return show(vae.sample(len(z), y=y, z=z, means_below=True))

        figures = {}
        points, axes = project_2d(loc)
        given = ", given the true label y" if conditional else ""
        figures["latent_map.png"] = lambda path: plots.latent_map(
            path, points, test.y, axes, f"posterior means E[{site} | x{', y' if conditional else ''}] of {len(test)} test images{given}")

        pairs = interpolation_pairs(test, 8, conditional)
        steps = torch.linspace(0, 1, 8)
        rows = []
        for a, b in pairs:
            path = loc[a] + steps.unsqueeze(1) * (loc[b] - loc[a])
            y = None if not conditional else test.y[a].expand(len(steps))
            rows.append(torch.cat([show(test.x[a : a + 1]), decode(path, y), show(test.x[b : b + 1])]))
        what = "between two test images of the same label, decoded with that label" if conditional else "between pairs of test images"
        if rows:  # a test set of one image (or no two of a label) has no pair to join
            figures["interpolations.png"] = lambda path: plots.image_grid(
                path, torch.cat(rows), image_shape, len(steps) + 2, title=f"straight paths between posterior means, {what}",
                col_labels=["image A"] + [f"t={t:.2f}" for t in steps.tolist()] + ["image B"])

        levels = torch.linspace(0.05, 0.95, QUANTILE_LEVELS)
        values = prior_quantiles(prior, levels)
        anchor_y = None if not conditional else test.y[0].expand(len(levels))
        traversal_rows = []
        for j in drawn:
            z = loc[0].repeat(len(levels), 1)
            z[:, j] = values[:, j]
            traversal_rows.append(decode(z, anchor_y))
        anchor = f"test image 0 (label {int(test.y[0])})" if test.y is not None else "test image 0"
        figures["traversals.png"] = lambda path: plots.image_grid(
            path, torch.cat(traversal_rows), image_shape, len(levels),
            title=f"one dimension varied over the prior's quantiles, the others at the code of {anchor}",
            row_labels=[f"{site}[{j}]  KL {kl[j]:.2f}" for j in drawn], col_labels=[f"{q:.0%}" for q in levels.tolist()],
            xlabel="quantile of the prior's marginal")

        if vae.top_dim == 2:
            grid_levels = (torch.arange(MANIFOLD_SIDE) + 0.5) / MANIFOLD_SIDE
            grid_values = prior_quantiles(prior, grid_levels)
            # rows run from high z[1] at the top to low at the bottom, as on a plot's y axis
            z2, z1 = torch.meshgrid(grid_values[:, 1].flip(0), grid_values[:, 0], indexing="ij")
            grid_z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)
            label = None if not conditional else test.y[0].expand(len(grid_z))
            manifold = decode(grid_z, label)
            decoded_as = f", decoded with label {int(test.y[0])}" if conditional else ""
            figures["manifold.png"] = lambda path: plots.image_grid(
                path, manifold, image_shape, MANIFOLD_SIDE, title=f"decoder means over a grid of prior quantiles{decoded_as}",
                xlabel=f"z[0]: prior quantiles {grid_levels[0]:.1%} to {grid_levels[-1]:.1%}, left to right",
                ylabel="z[1]: high (top) to low (bottom)")

    out.mkdir(parents=True, exist_ok=True)
    for name, draw in figures.items():
        draw(out / name)
    bottom = layers[0]
    families = [vae.family, *(layer.family for layer in vae.layers)]
    summary = {
        "n": len(test),
        "latent_dim": vae.latent_dim,
        # the total over the layers, as compare shows it; each layer's in "layers"
        "active_units": sum(layer["active_units"] for layer in layers),
        "active_units_by_layer": "+".join(str(layer["active_units"]) for layer in layers),
        "active_threshold": ACTIVE_THRESHOLD,
        "posterior_mean_variance": bottom["posterior_mean_variance"].tolist(),
        "kl_per_dim": bottom["kl_per_dim"].tolist(),
        "kl_method": method,
        # per layer: q's marginal for one layer, its conditional given the layer below for a stack
        "posterior_marginals": "exact" if all(getattr(f, "gaussian_marginals", False) for f in families) else "gaussian_approximation",
        "kl_total": float(sum(layer["kl_per_dim"].sum() for layer in layers)),
        "dimensions_drawn": drawn,
        "figures": sorted(figures),
        "layers": [{**layer, "posterior_mean_variance": layer["posterior_mean_variance"].tolist(), "kl_per_dim": layer["kl_per_dim"].tolist(),
                    "kl_stderr": None if layer["kl_stderr"] is None else layer["kl_stderr"].tolist()} for layer in layers],
    }
    if bottom["kl_stderr"] is not None:
        summary["kl_stderr"] = bottom["kl_stderr"].tolist()
        summary["kl_samples_per_datum"] = KL_SAMPLES
    # kept for `pyro-vae compare` (its active-units column), one record per seed
    records.write(run_dir, records.explore_name(seed), records.new_record(
        "explore", {"seed": seed}, records.images(test, 0), payload.get("data_fingerprint"), summary))
    print(table(summary, run_dir, out))
    if json_summary:
        print(json.dumps(summary))
    return summary


def table(s, run_dir, out):
    layers = s["layers"]
    samples = f"{KL_SAMPLES} z per image" if len(layers) == 1 else f"{KL_SAMPLES} draws of every layer per image"
    how = {"closed_form": "closed form", "monte_carlo": f"Monte Carlo, {samples}, exact prior marginals",
           "monte_carlo_kde": f"Monte Carlo, {samples}, prior marginals by kernel density from {KDE_SAMPLES} prior draws"}[s["kl_method"]]
    if s["posterior_marginals"] != "exact":
        how += "; q(z_j|x) taken as the Gaussian with q's mean and std per dimension, since this guide's marginals have no formula"
    dims = "+".join(str(layer["latent_dim"]) for layer in layers)
    what = ("KL(q(z_j|x) || p(z_j)) per dimension" if len(layers) == 1 else
            "log q(z_j | layer below) - log p(z_j | layer above) per dimension of each layer (the prior at the top)")
    stderr = any(layer["kl_stderr"] is not None for layer in layers)
    lines = [
        f"{run_dir}: {s['n']} test images, latent_dim {dims}" + (f" (sites {', '.join(layer['site'] for layer in layers)})" if len(layers) > 1 else ""),
        f"active units: {s['active_units_by_layer']} of {dims} (variance of the posterior mean across the data > {s['active_threshold']})",
        f"{what}, nats averaged over the test set ({how}); total {s['kl_total']:.2f}",
        f"{'dim':>8} {'KL':>8} {'Var E[z|x]':>11}" + (f" {'std. err. of KL':>16}" if stderr else ""),
    ]
    for layer in layers:
        for j in sorted(range(layer["latent_dim"]), key=lambda j: -layer["kl_per_dim"][j]):
            err = f" {layer['kl_stderr'][j]:16.3f}" if stderr else ""
            lines.append(f"{layer['site'] + f'[{j}]':>8} {layer['kl_per_dim'][j]:8.3f} {layer['posterior_mean_variance'][j]:11.3f}{err}")
    top = layers[-1]["site"]
    lines.append(f"traversals.png shows {', '.join(f'{top}[{j}]' for j in s['dimensions_drawn'])} (0-based); figures in {out}: {', '.join(s['figures'])}")
    return "\n".join(lines)
