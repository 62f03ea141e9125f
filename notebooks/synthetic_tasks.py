# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The JSLDS paper's synthetic tasks, from its published weights
#
# 3-bit flip-flop: the expansion points cluster at the 8 corners of the cube, each a
# marginally stable fixed point (leading |λ| ≈ 1). Context-dependent integration: the
# expansion points lie on a line attractor (one |λ| ≈ 1, the next ≈ 0.3), and the
# selection vector (left eigenvector of the slow mode times J_u) says which input the
# network integrates in each context. The weights live in the steering repo's
# `shared/reference/` (set `LFADS_JSLDS_SHARED`); they come from
# github.com/jimmysmith1919/JSLDS_public, `JSLDS_code/`.

# %%
import os
from pathlib import Path

import jax
import numpy as np

from lfads_jslds.analysis.eigen import eig_modes
from lfads_jslds.analysis.fixed_points import deduplicate
from lfads_jslds.analysis.jacobians import jacobians
from lfads_jslds.models.cells import CELLS
from lfads_jslds.tasks import get_task
from lfads_jslds.tasks.model import readout, run_batch
from lfads_jslds.tasks.weights import load_task_weights

SHARED = Path(os.environ.get("LFADS_JSLDS_SHARED", "../../shared"))

# %% [markdown]
# ## Flip-flop: expansion points at the corners

# %%
spec = get_task("flipflop")
params, model = load_task_weights(SHARED / "reference" / "flipflop3_jslds_paper.npz", spec)
batch = spec.sample(jax.random.PRNGKey(0), 256)
traj = jax.device_get(run_batch(params, batch.inputs, model))
n = model.n_hidden
e = traj.e_star.reshape(-1, n)
residual = np.linalg.norm((traj.f_star - traj.e_star).reshape(-1, n), axis=1)
centers = e[deduplicate(e, residual, 0.2)]
share = np.bincount(
    np.argmin(np.linalg.norm(e[:, None] - centers[None], axis=-1), axis=1), minlength=len(centers)
) / len(e)
corners = centers[share >= 0.02]
cell = CELLS[model.cell][0]
J_h, _ = jacobians(lambda h, u: cell(params["cell"], h, u), corners, np.zeros(6, np.float32))
lead = np.abs(eig_modes(J_h).eigenvalues[:, 0])
for c, lam in zip(np.sign(np.asarray(readout(params, corners))), lead, strict=True):
    print("corner", c.astype(int), f"leading |λ| {lam:.3f}")
print(len(corners), "corners")

# %% [markdown]
# ## Context integration: line attractor and selection vectors

# %%
spec = get_task("context")
params, model = load_task_weights(SHARED / "reference" / "context_jslds.npz", spec)
batch = spec.sample(jax.random.PRNGKey(0), 64)
traj = run_batch(params, batch.inputs, model)
e = np.asarray(traj.e_star).reshape(-1, model.n_hidden)
u_star = np.asarray(batch.inputs).reshape(-1, spec.n_in).copy()
u_star[:, :2] = 0.0  # u* keeps the context channels, zeroes the noisy inputs
cell = CELLS[model.cell][0]
J_h, J_u = jacobians(lambda h, u: cell(params["cell"], h, u), e, u_star)
modes = eig_modes(J_h)
mags = np.abs(modes.eigenvalues)
print(f"median |λ1| {np.median(mags[:, 0]):.3f}, |λ2| {np.median(mags[:, 1]):.3f}")
# selection vector: the slow mode's left eigenvector times J_u, for the two sensory inputs
selection = np.real(np.einsum("kn,knm->km", modes.left[:, 0, :], J_u))[:, :2]
context = u_star[:, 2] > 0.5  # first context channel on
for name, rows in (("context 1", context), ("context 2", ~context)):
    s = np.abs(selection[rows]).mean(0)
    print(f"{name}: |selection · input 1| {s[0]:.3f}, |selection · input 2| {s[1]:.3f}")
