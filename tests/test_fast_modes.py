"""The fast Jacobian-mode path agrees with LAPACK at every point, on trained runs.

Two tiny LFADS-JSLDS runs (a synthetic MC_Maze-like session with a planted 2 Hz rotation,
as the demo's, and the real MC_Maze_Small spikes from DANDI) are analysed twice, with
``analyze`` and ``analyze --exact``; ``jacobian_modes`` runs both ways on the same
expansion points. A converged JSLDS names expansion points that barely move (the fast
path's premise); a training of test length does not get there, so each run's points
are contracted toward their mean to a converged run's measured spread
(``CONVERGED_SPREAD``) before the analyses: the generator, its states and the
deviations ``a_{t−1} − e*`` stay the trained ones. The fast path must carry most bins.
Tolerances, from what the fast path guarantees per accepted point
(``modes._modes_block_fast``):

- the dominant pair is the same pair: same ``has_rotation`` and ``dominant_index`` in
  every bin (an undecided choice is decomposed exactly, never guessed);
- its eigenvalue is refined to second order and accepted only when the estimated rest is
  at most ``FAST_TOL``; with a factor 10 for the estimate, ``|Δλ| ≤ 10·FAST_TOL``, hence
  per bin ``|Δf| ≤ |Δλ| / (2π Δt |λ|)`` (the angle moves by at most ``|Δλ|/|λ|``) and
  ``|Δ(1/τ)| = |Δ ln|λ|| / Δt ≤ |Δλ| / (|λ| Δt)`` (τ compared through its rate: τ is
  +inf at ``|λ| ≥ 1``);
- ``summary.json``'s medians and quartiles over trials of per-trial medians move by at
  most the largest per-bin change (a median is 1-Lipschitz in the sup norm), so the same
  bounds hold for ``rotation_hz_*``; ``tau_s_median`` through its rate;
- ``share`` divides by the summed weight of all modes, whose non-dominant members keep
  the representative's eigenvectors (first order in ``‖E‖``): within 0.02 absolute
  (0.0044 at most on the real 20 ms run of MC_Maze, 10 500 bins);
- the stored spectrum is the representative's: every exact eigenvalue lies within the
  Bauer–Fike radius ``FAST_SPECTRUM_TOL`` of a stored one;
- everything that does not use the modes (fixed points, residuals, jPCA) is identical.
"""

import json
import shutil

import h5py
import numpy as np
import pytest
from conftest import shared_file
from typer.testing import CliRunner

from lfads_jslds.analysis import modes
from lfads_jslds.cli import app
from lfads_jslds.data import dataset, synth
from lfads_jslds.models.cells import lfads_gru
from lfads_jslds.pipeline.run import RunFolder

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("compile_cache")

TINY = [
    "model.ic_enc_dim=16",
    "model.ci_enc_dim=8",
    "model.con_dim=8",
    "model.co_dim=2",
    "model.ic_dim=8",
    "model.gen_dim=24",
    "model.fac_dim=6",
    "train.batch_size=20",
    "train.max_epochs=20",
    "train.kl_ramp_epochs=0",
    "train.l2_ramp_epochs=0",
    "train.checkpoint_every=20",
    "infer.samples=2",
]
#: Median ‖e* − mean e*‖ over all bins of a converged run: 0.010 on the real-spike MC_Maze
#: run of the README (20 ms, 396 epochs; 0.012 on MC_Maze_Small). A test-sized training
#: leaves them 5–30 times as spread, so the tests contract them to this.
CONVERGED_SPREAD = 0.010


def _sets(extra=()):
    return [a for s in TINY + list(extra) for a in ("--set", s)]


def _train_and_infer(data, run, extra_args=()):
    args = ["train", str(data), "--out", str(run), "--no-progress", *extra_args, *_sets()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["infer", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    with h5py.File(run / "inference.h5", "r+") as f:  # as a converged JSLDS names them
        e = f["expansion_points"][()]
        centre = e.mean((0, 1))
        spread = np.median(np.linalg.norm(e - centre, axis=-1))
        f["expansion_points"][...] = centre + (CONVERGED_SPREAD / spread) * (e - centre)
    return run


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A demo-style session: planted 2 Hz rotation, MC_Maze layout, 20 ms bins."""
    root = tmp_path_factory.mktemp("synthetic")
    cfg = synth.SynthConfig("fast", 30, 10, 40, 10, 0, n_trial_types=4, n_versions=2)
    synth.write_nwb(root / "s.nwb", synth.make_synthetic(cfg, seed=0))
    return _train_and_infer(root / "s.nwb", root / "run")


@pytest.fixture(scope="module")
def real_spikes_run(tmp_path_factory):
    """MC_Maze_Small's real spikes (DANDI 000140), split as the README's runs."""
    nwb = shared_file("data/dandi/sub-Jenkins_ses-small_desc-test_ecephys.nwb")
    root = tmp_path_factory.mktemp("real")
    with pytest.warns(UserWarning, match="no room for the 200 ms forward window"):
        dataset.tensors_from_nwb(
            nwb, root / "t.h5", 20, None, val_fraction=0.2, heldout_fraction=0.25
        )
    return _train_and_infer(root / "t.h5", root / "run")


def _modes_both_ways(run):
    folder = RunFolder.open(run)
    cfg, params = folder.config, folder.params()
    inf, attrs = folder.inference()
    dt = float(attrs["bin_ms"]) / 1000.0
    cell = lambda p, h, u: lfads_gru(p, h, u, clip=cfg.model.cell_clip)  # noqa: E731
    args = (cell, params["gen"], inf["expansion_points"], cfg.model.co_dim, dt)
    kw = {"states": inf["jslds_states"], "initial": inf["g0"]}
    return (modes.jacobian_modes(*args, **kw, exact=e) for e in (False, True))


def _check_bins(fast, exact):
    """Per-bin agreement within the module docstring's tolerances."""
    n = fast.has_rotation.size
    assert fast.exact is False and exact.exact is True and exact.n_exact == n
    # the fast path carries a good part of the bins (on the README's converged 20 ms MC_Maze
    # run: 97.5 %; on these contracted test runs about half)
    assert fast.n_exact <= 0.75 * n, "the fast path barely ran: nothing is being compared"
    np.testing.assert_array_equal(fast.has_rotation, exact.has_rotation)
    np.testing.assert_array_equal(fast.dominant_index, exact.dominant_index)
    rot = exact.has_rotation
    err = 10 * modes.FAST_TOL
    lam_f, lam_e = fast.dominant_eigenvalue[rot], exact.dominant_eigenvalue[rot]
    assert np.all(np.abs(lam_f - lam_e) <= err)
    r = np.abs(lam_e)
    assert np.all(np.abs(fast.freq_hz[rot] - exact.freq_hz[rot]) <= err / (2 * np.pi * fast.dt * r))
    rate_f = -np.log(fast.abs_lambda[rot]) / fast.dt
    rate_e = -np.log(exact.abs_lambda[rot]) / exact.dt
    assert np.all(np.abs(rate_f - rate_e) <= err / (r * fast.dt))
    assert np.all(np.abs(fast.share - exact.share) <= 0.02)
    np.testing.assert_allclose(fast.deviation_norm, exact.deviation_norm, rtol=1e-12)
    # Bauer–Fike: every exact eigenvalue lies within the radius of one stored
    dist = np.abs(exact.eigenvalues[..., :, None] - fast.eigenvalues[..., None, :])
    assert dist.min(-1).max() <= modes.FAST_SPECTRUM_TOL
    return err / (2 * np.pi * fast.dt * r.min()), err / (r.min() * fast.dt)


def _check_summaries(run, df, drate):
    """``analyze`` and ``analyze --exact`` on copies of the same run."""
    twin = run.parent / f"{run.name}_exact"
    shutil.copytree(run, twin, ignore=shutil.ignore_patterns("analysis"))
    shutil.rmtree(run / "analysis", ignore_errors=True)
    assert runner.invoke(app, ["analyze", str(run)]).exit_code == 0
    result = runner.invoke(app, ["analyze", str(twin), "--exact"])
    assert result.exit_code == 0, result.output
    fast = json.loads((run / "analysis" / "summary.json").read_text())
    exact = json.loads((twin / "analysis" / "summary.json").read_text())
    assert fast["modes_exact"] is False and exact["modes_exact"] is True
    assert fast["modes_decomposed_exactly"] < exact["modes_decomposed_exactly"]
    for key in ("rotation_hz_median", "rotation_hz_iqr"):
        assert abs(fast[key] - exact[key]) <= 2 * df, key  # iqr: two quartiles
    for block in ("overall",):
        f, e = fast["modes"][block]["freq_hz"], exact["modes"][block]["freq_hz"]
        for q in ("median", "q25", "q75"):
            assert abs(f[q] - e[q]) <= df, q
    tf, te = fast["tau_s_median"], exact["tau_s_median"]
    assert (tf is None) == (te is None)
    if te is not None:
        assert abs(1 / tf - 1 / te) <= drate
    for key in (
        "fixed_point_residual_median",
        "distinct_fixed_points_per_trial",
        "numerical_fixed_points",
        "jpca",
        "n_trials",
    ):
        assert fast[key] == exact[key], key
    for key in ("share_median", "fraction_bins_rotating", "n_trials_rotating"):
        f, e = fast["modes"]["overall"][key], exact["modes"]["overall"][key]
        assert abs(f - e) <= (0.02 if key == "share_median" else 0), key
    with (
        h5py.File(run / "analysis" / "modes.h5") as a,
        h5py.File(twin / "analysis" / "modes.h5") as b,
    ):
        np.testing.assert_array_equal(a["has_rotation"][()], b["has_rotation"][()])


@pytest.mark.parametrize("which", ["synthetic_run", "real_spikes_run"])
def test_fast_modes_match_lapack_on_a_trained_run(which, request):
    run = request.getfixturevalue(which)
    fast, exact = _modes_both_ways(run)
    df, drate = _check_bins(fast, exact)
    _check_summaries(run, df, drate)
