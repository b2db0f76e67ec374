"""Built-in implicit models whose posteriors are known.

Each example bundles synthetic data, a model whose likelihood is an
:class:`~pyro_lfvi.ImplicitSite`, a guide, and the exact posterior of the
explicit version of the same model (or reference posterior samples), so that
LFVI's answer can be checked.
They serve the demo, the tests and the benchmarks (whose fitting helpers live in
``benchmarks/fitting.py``, outside the package).

* :mod:`.normal`: Normal models with many observations (conjugate,
  hierarchical with local means, bimodal locals);
* :mod:`.single`: a single observation (N = 1), the setting of ABC
  benchmarks: an AR(1) series and sbibm's ``gaussian_linear``;
* :mod:`.sbibm`: sbibm's ``two_moons`` and ``slcp`` tasks (N = 1), whose
  multimodal posteriors are known through sbibm's reference samples (shipped
  in ``examples/data/``) rather than in closed form, with flow guides;
* :mod:`.epidemic`: sbibm's ``sir`` task (N = 1), an SIR epidemic's ODE
  observed through ten survey counts, reference samples shipped, and its
  explicit likelihood;
* :mod:`.glm`: sbibm's ``bernoulli_glm`` task (N = 1), a near-Gaussian
  posterior with strongly correlated parameters, reference samples shipped,
  and an explicit twin;
* :mod:`.series`: time series with a local coefficient per series, two observed
  variables, and an explicit twin for NUTS.
"""

from .epidemic import SIR
from .glm import BernoulliGLM
from .normal import (
    BimodalLocals,
    ConjugateNormal,
    HierarchicalNormal,
)
from .sbibm import SLCP, TwoMoons
from .series import LocalSeries
from .single import AR1Series, GaussianLinear

__all__ = [
    "AR1Series",
    "BernoulliGLM",
    "BimodalLocals",
    "ConjugateNormal",
    "GaussianLinear",
    "HierarchicalNormal",
    "LocalSeries",
    "SIR",
    "SLCP",
    "TwoMoons",
]
