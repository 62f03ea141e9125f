"""The one typed config of an LFADS run: model, loss weights, training, inference, data.

YAML files under ``pipelines/configs/`` and ``--set key=value`` overrides fill it
(``lfads_jslds.config.resolve``); the resolved config is saved as the run's ``config.yaml``.
Epoch-based quantities (ramps, patience) count passes over the training trials.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lfads_jslds import config as config_lib
from lfads_jslds.config import ConfigError, Decay, Fraction, NonNegative, Positive, Rate
from lfads_jslds.models.lfads import LFADSConfig, LossWeights


@dataclass(frozen=True)
class DataConfig:
    """How the input is cut. NWB: binned at ``bin_ms`` (None: 20 ms); the split options,
    where given, replace the file's ``split`` / ``heldout`` columns, and are needed where
    those say nothing usable (NLB's test files). Tensor files come cut: ``bin_ms``, where
    given, must agree with what the file says; the split options do not apply.
    """

    bin_ms: int | None = None
    lag_ms: int | None = None  # behaviour lag; None: the dataset's NLB value
    val_fraction: Fraction | None = None  # of the trials, drawn as val trials
    heldout_fraction: Fraction | None = None  # of the units, held out
    heldout_units: tuple[int, ...] | None = None  # or these unit ids held out
    split_seed: int = 0  # draws both (independent streams)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 25
    max_epochs: int = 1000
    lr: Positive = 4e-3
    lr_decay: Decay = 1.0  # per epoch: lr · lr_decay^epoch
    weight_decay: NonNegative = 0.0  # AdamW's decoupled decay (0: none)
    adam_eps: Positive = 1e-8
    clip_norm: Positive = 200.0  # global gradient norm
    kl_start_epoch: int = 0
    kl_ramp_epochs: int = 50  # KL weight rises linearly 0 → 1 over these epochs
    l2_start_epoch: int = 0
    l2_ramp_epochs: int = 50
    cd_rate: Rate = 0.3  # coordinated dropout: fraction of inputs masked
    # sample validation: this fraction of the eval trials' held-in observed entries, a fixed
    # mask drawn from ``seed``, is withheld from the encoder and is all validation scores
    sv_rate: Fraction = 0.2
    # the eval trials' held-in spikes (less the sample-validation entries) join training
    use_eval_heldin: bool = False
    val_every: int = 1  # epochs between validations
    smoothing: Rate = 0.9  # EMA factor of the val NLL early stopping watches
    patience: int = 200  # epochs without a better smoothed validation NLL before stopping
    checkpoint_every: int = 25  # epochs
    max_bad_steps: int = 10  # non-finite steps in a row before rolling back
    max_rollbacks: int = 5  # rollbacks (each halves the lr) before giving up
    seed: int = 0


@dataclass(frozen=True)
class InferConfig:
    samples: int = 50  # posterior samples averaged for the rates
    batch_size: int = 100  # trials per inference batch (bounds memory)
    posterior_mean: bool = False  # rates from the posterior means alone (no sampling)


@dataclass(frozen=True)
class EvaluateConfig:
    """The smoothing baseline ``metrics.json`` reports beside the model.

    ``smooth_cv``: its kernel s.d. and GLM alpha are chosen by ``smooth_cv_folds``-fold CV on
    the train trials over the grid ``smooth_cv_sd_ms`` × ``smooth_cv_alphas`` (the choice and
    the scores are recorded). Off: NLB's fixed recipe, ``smooth_sd_ms`` / ``smooth_alpha``
    (None: the dataset's NLB values, ``data.nlb``; tuned at 5 ms).
    """

    smooth_cv: bool = True
    smooth_cv_sd_ms: tuple[Positive, ...] = (20.0, 40.0, 60.0, 80.0)
    smooth_cv_alphas: tuple[Positive, ...] = (0.01, 0.1, 0.3, 1.0, 3.0)
    smooth_cv_folds: int = 3
    smooth_sd_ms: Positive | None = None
    smooth_alpha: Positive | None = None

    def __post_init__(self) -> None:
        grids = ("smooth_cv_sd_ms", "smooth_cv_alphas")  # values: > 0 by their annotation
        bad = [f"evaluate.{k} = () (needs a value)" for k in grids if not getattr(self, k)]
        if self.smooth_cv_folds < 2:
            bad.append(f"evaluate.smooth_cv_folds = {self.smooth_cv_folds} (needs at least 2)")
        if bad:
            raise ConfigError(f"invalid config values: {', '.join(bad)}")


@dataclass(frozen=True)
class RunConfig:
    model: LFADSConfig = field(default_factory=LFADSConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    data: DataConfig = field(default_factory=DataConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def validate(cfg: RunConfig) -> None:
    """Refuse values that would only fail after compiling, or mid-run (NaN weights).

    Float hyperparameters: finite and in the ``Range`` their field is annotated with
    (``config.check``, the rule a config file meets); here the rules across fields.
    """
    config_lib.check(cfg)
    m, t, i = cfg.model, cfg.train, cfg.infer
    positive = {
        "model.ic_enc_dim": m.ic_enc_dim,
        "model.ic_dim": m.ic_dim,
        "model.gen_dim": m.gen_dim,
        "model.fac_dim": m.fac_dim,
        "train.batch_size": t.batch_size,
        "train.max_epochs": t.max_epochs,
        "train.val_every": t.val_every,
        "train.checkpoint_every": t.checkpoint_every,
        "train.max_bad_steps": t.max_bad_steps,
        "infer.samples": i.samples,
        "infer.batch_size": i.batch_size,
    }
    if cfg.data.bin_ms is not None:
        positive["data.bin_ms"] = cfg.data.bin_ms
    if m.co_dim > 0:
        positive.update({"model.ci_enc_dim": m.ci_enc_dim, "model.con_dim": m.con_dim})
    bad = [f"{k} = {v}" for k, v in positive.items() if v < 1]
    if bad:
        raise ConfigError(f"must be at least 1: {', '.join(bad)}")
    nonneg = {
        "model.co_dim": m.co_dim,
        "model.ci_lag": m.ci_lag,
        "train.kl_ramp_epochs": t.kl_ramp_epochs,
        "train.l2_ramp_epochs": t.l2_ramp_epochs,
        "train.max_rollbacks": t.max_rollbacks,
        "train.patience": t.patience,
    }
    bad = [f"{k} = {v}" for k, v in nonneg.items() if v < 0]
    if cfg.data.heldout_fraction is not None and cfg.data.heldout_units is not None:
        bad.append("data.heldout_fraction and data.heldout_units (give one)")
    if bad:
        raise ConfigError(f"invalid config values: {', '.join(bad)}")
