"""pyro_vae: variational autoencoders written the Pyro way."""

from .errors import UserError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .marginal import LogPxResult, estimate_log_px
from .model import VAE
from .objectives import OBJECTIVES
from .priors import PRIORS
from .runfolder import load_run

register_prior = PRIORS.register
register_likelihood = LIKELIHOODS.register
register_guide = GUIDES.register
register_objective = OBJECTIVES.register

__all__ = ["VAE", "UserError", "PRIORS", "LIKELIHOODS", "GUIDES", "register_prior", "register_likelihood", "register_guide", "OBJECTIVES", "register_objective", "estimate_log_px", "LogPxResult",
           "fit_tensors", "train_run", "load_run"]


def __getattr__(name):
    # the trainer is imported when first asked for, so that reading a run folder (evaluate,
    # compare, explore) does not import it: `pyro_vae.train_run` and `from pyro_vae import
    # fit_tensors` work as before
    if name in ("fit_tensors", "train_run"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
