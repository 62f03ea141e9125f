"""lfads-jslds: LFADS with a Jacobian switching linear dynamical system (JSLDS) generator.

Layout, bottom to top (no import runs back up): ``config`` and ``io`` (typed configs,
safe file readers); the library: ``models`` (cells, expansion network, JSLDS step,
LFADS-JSLDS), ``tasks`` (the paper's synthetic tasks), ``data`` (NWB, NLB tensors),
``analysis`` (post-hoc Jacobians, eigenmodes, fixed points, jPCA), ``metrics``;
``training`` (the loops); ``pipeline`` (the stages on a ``RunFolder``); ``cli``.

Arrays are float32 unless a caller passes float64 (the tests enable ``jax_enable_x64``
to check identities at 1e-10).
"""

__version__ = "0.1.0"
