"""The synthetic tasks' distributions, pinned to the paper's definitions (DESIGN §2).

Tolerances are 5 binomial / sampling standard deviations of the checked statistic.
"""

import jax
import numpy as np
import pytest

from lfads_jslds.tasks import sample_context, sample_flipflop

B = 4096


@pytest.fixture(scope="module")
def flipflop():
    return jax.device_get(sample_flipflop(jax.random.PRNGKey(0), B))


def test_flipflop_shapes_and_one_hot_layout(flipflop):
    inputs, targets, mask = flipflop
    assert inputs.shape == (B, 25, 6) and targets.shape == (B, 25, 3) and mask.shape == (25,)
    pairs = inputs.reshape(B, 25, 3, 2)
    assert set(np.unique(inputs)) <= {0.0, 1.0}
    assert np.all(pairs.sum(-1) <= 1), "a bit cannot get +1 and -1 at once"


def test_flipflop_pulse_frequencies_are_one_third(flipflop):
    pairs = flipflop.inputs.reshape(B, 25, 3, 2)
    n = pairs[..., 0].size
    p_minus, p_plus = pairs[..., 0].mean(), pairs[..., 1].mean()
    p_zero = 1 - p_minus - p_plus
    tol = 5 * np.sqrt((1 / 3) * (2 / 3) / n)
    for p in (p_minus, p_plus, p_zero):
        assert abs(p - 1 / 3) < tol


def test_flipflop_target_is_last_nonzero_pulse_and_mask_from_step_5(flipflop):
    inputs, targets, mask = flipflop
    pulses = inputs.reshape(B, 25, 3, 2) @ np.array([-1.0, 1.0])
    for trial in range(200):
        for bit in range(3):
            state = -1.0
            for t in range(25):
                if pulses[trial, t, bit] != 0:
                    state = pulses[trial, t, bit]
                assert targets[trial, t, bit] == state
    np.testing.assert_array_equal(mask, np.arange(25) >= 5)


def test_context_distribution():
    inputs, targets, mask = jax.device_get(sample_context(jax.random.PRNGKey(1), B))
    assert inputs.shape == (B, 25, 4) and targets.shape == (B, 25, 1)
    assert mask.all(), "every step is in the context task's loss"
    ctx = inputs[..., 2:]
    assert np.all(ctx == ctx[:, :1]), "context is constant over a trial"
    assert np.all(ctx.sum(-1) == 1) and set(np.unique(ctx)) == {0.0, 1.0}
    assert abs(ctx[:, 0, 0].mean() - 0.5) < 5 * np.sqrt(0.25 / B)

    signal = inputs[..., :2]
    bias = signal.mean(axis=1)  # per trial: bias + mean of 25 noise draws
    noise = signal - signal.mean(axis=1, keepdims=True)
    # noise std 0.025/√0.04 = 0.125 (sample variance over 25 steps, ddof=1)
    noise_sd = np.sqrt((noise**2).sum(1) / 24).mean()
    assert abs(noise_sd - 0.125) < 0.002
    # bias = 0.01·2·(N(0,1) − 0.5): mean −0.01; per-trial mean adds noise var 0.125²/25
    assert abs(bias.mean() - (-0.01)) < 5 * np.sqrt((0.02**2 + 0.125**2 / 25) / (2 * B))

    cued = np.where(ctx[:, :, :1] == 1, signal[..., :1], signal[..., 1:2])
    np.testing.assert_allclose(targets, np.cumsum(cued, axis=1), rtol=1e-5, atol=1e-5)
