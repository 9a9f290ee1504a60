"""The random streams: every kind of draw has its own generator, a function of (seed, kind, index)."""

import itertools

import torch

from pyro_vae import noise


def first_draws(seed, kind, index):
    return torch.rand(4, generator=noise.seeded(seed, kind, index))


def test_each_kind_index_and_seed_has_its_own_stream():
    keys = list(itertools.product((0, 1, 2**32 - 1), noise.STREAMS, range(4)))
    draws = torch.stack([first_draws(*key) for key in keys])
    # no two streams start alike (the old scheme gave epoch e's shuffle and step e - 1's noise one generator)
    assert len(torch.unique(draws, dim=0)) == len(keys)


def test_epoch_shuffle_and_the_previous_steps_noise_are_disjoint():
    for epoch in range(1, 5):
        assert not torch.equal(first_draws(0, "shuffle", epoch), first_draws(0, "step", epoch - 1))


def test_a_stream_is_a_function_of_its_key_alone():
    assert torch.equal(first_draws(7, "step", 3), first_draws(7, "step", 3))
    step = noise.StepNoise(7, 3, 5, slice(None), "cpu")
    assert torch.equal(torch.rand(4, generator=step.generator), first_draws(7, "step", 3))
