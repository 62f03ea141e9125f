"""lfads-jslds: LFADS with a Jacobian switching linear dynamical system (JSLDS) generator.

Layout: ``models`` (cells, expansion network, JSLDS step), ``tasks`` (the paper's
synthetic tasks), ``training`` (optimisers, checkpoints), ``analysis`` (post-hoc
Jacobians, eigenmodes, fixed points), ``io`` (safe file readers), ``cli``.

Arrays are float32 unless a caller passes float64 (the tests enable ``jax_enable_x64``
to check identities at 1e-10).
"""

__version__ = "0.1.0"
