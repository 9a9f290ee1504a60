"""pyro_vae: variational autoencoders written the Pyro way."""

from .errors import UserError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .marginal import LogPxResult, estimate_log_px
from .model import VAE
from .priors import PRIORS
from .run import fit_tensors, load_run, train_run

register_prior = PRIORS.register
register_likelihood = LIKELIHOODS.register
register_guide = GUIDES.register

__all__ = ["VAE", "UserError", "PRIORS", "LIKELIHOODS", "GUIDES", "register_prior", "register_likelihood", "register_guide", "estimate_log_px", "LogPxResult",
           "fit_tensors", "train_run", "load_run"]
