"""pyro_vae: variational autoencoders written the Pyro way."""

from .errors import UserError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .marginal import LogPxResult, estimate_log_px
from .model import VAE
from .objectives import OBJECTIVES
from .priors import PRIORS
from .run import fit_tensors, load_run, train_run

register_prior = PRIORS.register
register_likelihood = LIKELIHOODS.register
register_guide = GUIDES.register
register_objective = OBJECTIVES.register

__all__ = ["VAE", "UserError", "PRIORS", "LIKELIHOODS", "GUIDES", "register_prior", "register_likelihood", "register_guide", "OBJECTIVES", "register_objective", "estimate_log_px", "LogPxResult",
           "fit_tensors", "train_run", "load_run"]
