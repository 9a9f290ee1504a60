"""Name -> class registries for priors and likelihoods, so new ones plug in with a decorator."""

import inspect
import math

import torch

from .errors import UserError


class Registry:
    """Maps a name to a class whose keyword arguments are the spec's parameters.

    A spec is either a registered name or a dict ``{"type": name, **params}``.
    """

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, name):
        """Class decorator: ``cls`` is built for specs naming ``name``, and ``cls.name`` is set to
        it, so messages name the class as the config does."""

        def decorator(cls):
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorator

    def names(self):
        return sorted(self._classes)

    def resolve(self, spec, key):
        """Return ``(cls, params)`` for ``spec``; ``key`` names the config key in error messages."""
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("type"), str):
            params = dict(spec)
            name = params.pop("type")
        else:
            raise UserError(
                f"{key} must be a {self.kind} name or a table with a 'type' key, got {spec!r}; "
                f"valid names: {', '.join(self.names())}"
            )
        if name not in self._classes:
            raise UserError(f"unknown {self.kind} '{name}' for {key}; valid names: {', '.join(self.names())}")
        cls = self._classes[name]
        defaults = self.parameters(cls)
        for param, value in params.items():
            if param not in defaults:
                valid = ", ".join(defaults) or "none"
                raise UserError(f"unknown parameter '{param}' for {self.kind} '{name}' in {key}; valid parameters: {valid}")
            expected = _type_like(defaults[param], value) or _float32_problem(value)
            if expected:
                raise UserError(f"parameter '{param}' of {self.kind} '{name}' in {key} must be {expected}, got {value!r}")
        return cls, params

    @staticmethod
    def parameters(cls):
        """The user-settable keyword-only parameters of ``cls`` with their defaults."""
        signature = inspect.signature(cls.__init__)
        return {p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def as_float32(value):
    """``value`` as float32, the training precision, holds it (0 where it underflows, inf where it overflows)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _float32_problem(value):
    """What a real ``value`` should be where float32, the training precision, cannot hold it as
    given (NaN or inf; a magnitude that overflows, or a nonzero one that underflows to 0)."""
    if not isinstance(value, float):
        return None
    if not math.isfinite(value):
        return "a finite number"
    single = as_float32(value)
    if not math.isfinite(single) or (value != 0 and single == 0):
        return "a number float32 can hold (magnitude between about 1e-38 and 3e38, or 0)"
    return None


def _type_like(default, value):
    """What ``value`` should be, where its type does not match ``default``'s; ``None`` where it does.
    A string default (``scale = "learned"``) can stand for several kinds of value: the class checks."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if whole(value) else "a whole number"
    if isinstance(default, float):
        return None if whole(value) or isinstance(value, float) else "a number"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, (list, tuple)) and all(whole(v) for v in value) else "a list of whole numbers"
    return None
