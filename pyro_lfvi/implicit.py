"""The site primitive: a sample-only distribution that wraps a simulator."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pyro.distributions import TorchDistribution, constraints

from .errors import ImplicitDensityError, SimulatorError
from .executor import map_rows, param_rows
from .validation import check_nonnegative_int, check_shape

__all__ = ["ImplicitSite"]


_Shape = torch.Size | list[int] | tuple[int, ...]


def _as_param(value: Any) -> Any:
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    return value


class ImplicitSite(TorchDistribution):
    r"""
    A sample-only distribution defined by a simulator: :math:`x = g(\epsilon \mid
    \theta)`, :math:`\epsilon \sim s(\cdot)`, with no density to evaluate.

    ``ImplicitSite(simulator, *params)`` draws by calling ``simulator(*params)``
    with every tensor parameter broadcast to ``sample_shape + batch_shape +
    param_event_shape``; the simulator draws its own noise and must return a
    tensor (or numpy array) of shape ``sample_shape + batch_shape +
    event_shape``. The batch shape is the broadcast of the parameters' batch
    shapes and grows under :class:`pyro.plate` like any Pyro distribution, so
    the simulator never runs to learn a shape.

    The same site serves as an observed likelihood, as an implicit prior of a
    local latent in a model, and as an implicit variational distribution of a
    local latent in a guide (an inference network fed with noise, which must
    then be ``reparameterized=True``). Train with :class:`~pyro_lfvi.LFVI`; any
    loss that asks for :meth:`log_prob` gets an :class:`ImplicitDensityError`.

    Example::

        >>> import pyro
        >>> import pyro.distributions as dist
        >>> import torch
        >>> from pyro_lfvi import ImplicitSite
        >>> def simulate(loc):
        ...     return loc + torch.randn_like(loc)
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", ImplicitSite(simulate, mu), obs=x)
        >>> site = ImplicitSite(simulate, torch.zeros(3))
        >>> site.sample((2,)).shape
        torch.Size([2, 3])
        >>> site.log_prob(torch.zeros(3))
        Traceback (most recent call last):
            ...
        pyro_lfvi.errors.ImplicitDensityError: ...

    :param callable simulator: a vectorised function of the parameters that
        draws its own noise.
    :param params: the simulator's arguments. Tensors, numbers and numpy
        arrays are broadcast to the batch shape; anything else is passed as is.
    :param event_shape: shape of one draw of the site (default ``()``).
    :type event_shape: tuple of int
    :param param_event_dims: how many rightmost dims of each tensor parameter
        belong to one draw (e.g. ``1`` for a 3-vector of rates per data point);
        an int for all parameters or one int per parameter. Default ``0``.
    :type param_event_dims: int or sequence of int
    :param bool reparameterized: declare that the simulator is differentiable
        in its parameters, so the site offers :meth:`rsample`. Default False.
    :param support: the support of the site, for guides and transforms that
        need it. Default ``constraints.real``.
    :type support: ~torch.distributions.constraints.Constraint
    :param bool vectorized: whether the simulator accepts batched parameters.
        If False, it is called once per batch element (slow; for simulators
        that take one parameter set at a time). Default True, or False with an
        ``executor`` (``vectorized=True`` with an executor is a ``ValueError``).
    :param executor: run an expensive simulator in parallel, one call per batch
        element, through the ``submit`` method of this
        ``concurrent.futures.Executor``: a ``ProcessPoolExecutor`` on one
        machine, a Dask cluster's ``Client.get_executor()`` across machines;
        any object whose ``submit(fn, *args)`` returns a future with
        ``result()`` and ``cancel()`` works (for Ray, which ships no
        executor, ``submit`` can return ``ray.remote(fn).remote(*args).future()``).
        The simulator is then called as
        ``simulator(*row, rng=rng)``, where ``row`` holds one batch element's
        parameters as numpy arrays (Python numbers where that element is a
        scalar; parameters that are not tensors, numbers or arrays as given)
        and ``rng`` is a :class:`numpy.random.Generator` seeded for that
        element. It must draw all its noise from ``rng`` and return a number or
        numpy array of shape ``event_shape``. The seeds are drawn from torch's
        generator in one call per simulation, so under ``pyro.set_rng_seed``
        the draws are the same bit for bit whatever the number of workers or
        the chunk size. For process pools and clusters, the simulator, its
        parameters and its results must be picklable: define the simulator at
        module level (not a lambda or a nested function). A simulator run by
        an executor cannot be ``reparameterized``. Default None (in process).
    :param int chunksize: with an executor, how many batch elements each task
        simulates (default: the batch split into at most 256 tasks).
    :param batch_shape: optional explicit batch shape, to broadcast to.
    :type batch_shape: torch.Size

    References

    [1] `Hierarchical Implicit Models and Likelihood-Free Variational Inference`,
        Dustin Tran, Rajesh Ranganath, David M. Blei (NIPS 2017)
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}

    def __init__(
        self,
        simulator: Callable[..., Any],
        *params: Any,
        event_shape: Sequence[int] = (),
        param_event_dims: int | Sequence[int] = 0,
        reparameterized: bool = False,
        support: constraints.Constraint = constraints.real,
        vectorized: bool | None = None,
        batch_shape: Sequence[int] | None = None,
        validate_args: bool | None = None,
        executor: Any = None,
        chunksize: int | None = None,
    ) -> None:
        if not callable(simulator):
            raise ValueError(f"Expected a callable simulator, actual {type(simulator).__name__}")
        if executor is not None:
            if not callable(getattr(executor, "submit", None)):
                raise ValueError(
                    f"Expected executor to be a concurrent.futures.Executor (an object with a "
                    f"submit method, e.g. ProcessPoolExecutor or a Dask client's "
                    f"get_executor()), actual {type(executor).__name__}"
                )
            if vectorized:
                raise ValueError(
                    "Expected vectorized=False (or left out) with an executor: the executor "
                    "calls the simulator once per batch element. Drop executor= to call a "
                    "vectorised simulator once in process"
                )
            if reparameterized:
                raise ValueError(
                    "Expected reparameterized=False with an executor: the workers receive "
                    "numpy copies of the parameters, so no gradient flows through the simulator"
                )
            vectorized = False
        if chunksize is not None and (
            isinstance(chunksize, bool)
            or not isinstance(chunksize, numbers.Integral)
            or chunksize < 1
        ):
            raise ValueError(f"Expected chunksize to be an int >= 1 or None, actual {chunksize!r}")
        params_t = tuple(_as_param(p) for p in params)
        event_shape = check_shape("event_shape", event_shape)
        if not isinstance(support, constraints.Constraint):
            raise ValueError(
                f"Expected support to be a torch constraint (e.g. "
                f"pyro.distributions.constraints.positive), actual {support!r}"
            )
        if isinstance(param_event_dims, numbers.Integral) and not isinstance(
            param_event_dims, bool
        ):
            ev_dims = tuple(int(param_event_dims) for _ in params_t)
        elif isinstance(param_event_dims, Sequence) and not isinstance(param_event_dims, str):
            ev_dims = tuple(
                check_nonnegative_int("each of param_event_dims", d) for d in param_event_dims
            )
        else:
            raise ValueError(
                f"Expected param_event_dims to be an int or one int per parameter, actual "
                f"{param_event_dims!r}"
            )
        if len(ev_dims) != len(params_t):
            raise ValueError(
                f"Expected one param_event_dims entry per parameter "
                f"({len(params_t)}), actual {len(ev_dims)}"
            )
        shapes = []
        for i, (p, d) in enumerate(zip(params_t, ev_dims, strict=False)):
            if d < 0:
                raise ValueError(f"Expected param_event_dims >= 0, actual {d}")
            if isinstance(p, torch.Tensor):
                if p.dim() < d:
                    raise ValueError(
                        f"Expected parameter {i} to have at least {d} dims "
                        f"(param_event_dims), actual shape {tuple(p.shape)}"
                    )
                shapes.append(p.shape[: p.dim() - d])
        try:
            inferred = torch.broadcast_shapes(*shapes) if shapes else torch.Size()
            if batch_shape is not None:
                inferred = torch.broadcast_shapes(inferred, torch.Size(batch_shape))
        except RuntimeError as err:
            raise ValueError(
                f"Expected parameters with broadcastable batch shapes, actual "
                f"{[tuple(s) for s in shapes]}: check param_event_dims"
            ) from err
        self.simulator = simulator
        self.params = params_t
        self.param_event_dims = ev_dims
        self.reparameterized = bool(reparameterized)
        self.vectorized = True if vectorized is None else bool(vectorized)
        self.executor = executor
        self.chunksize = None if chunksize is None else int(chunksize)
        self._support = support
        self.site_name: str | None = None
        # How many leading event dims were batch dims that to_event reinterpreted:
        # the simulator still runs over them as a batch.
        self._reinterpreted = 0
        self.allow_nonfinite = False
        super().__init__(
            batch_shape=inferred,
            event_shape=torch.Size(event_shape),
            validate_args=validate_args,
        )

    # -- distribution interface ------------------------------------------------

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.reparameterized

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        extra = len(self.event_shape) - self._support.event_dim
        if extra > 0:
            return constraints.independent(self._support, extra)
        return self._support

    def expand(self, batch_shape: Any, _instance: Any = None) -> ImplicitSite:
        new = copy.copy(self)
        batch_shape = torch.Size(batch_shape)
        try:
            torch.broadcast_shapes(batch_shape, self.batch_shape)
        except RuntimeError as err:
            raise ValueError(
                f"Expected a batch shape broadcastable with {tuple(self.batch_shape)}, "
                f"actual {tuple(batch_shape)}"
            ) from err
        super(ImplicitSite, new).__init__(
            batch_shape=batch_shape,
            event_shape=self.event_shape,
            validate_args=False,
        )
        return new

    def to_event(self, reinterpreted_batch_ndims: int | None = None) -> ImplicitSite:  # type: ignore[override]
        """
        Reinterpret the rightmost batch dims as event dims, as
        :meth:`pyro.distributions.TorchDistributionMixin.to_event` does, but
        return an :class:`ImplicitSite` (not an ``Independent`` wrapper), so
        that LFVI still sees an implicit site. The simulator is called exactly
        as before.

        :param int reinterpreted_batch_ndims: how many batch dims (default all).
        """
        rank = len(self.batch_shape)
        n = rank if reinterpreted_batch_ndims is None else reinterpreted_batch_ndims
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= rank:
            raise ValueError(
                f"Expected reinterpreted_batch_ndims between 0 and the batch rank {rank} of "
                f"{self._describe()} (batch shape {tuple(self.batch_shape)}), actual {n!r}"
            )
        if n == 0:
            return self
        new = copy.copy(self)
        new._reinterpreted = self._reinterpreted + int(n)
        super(ImplicitSite, new).__init__(
            batch_shape=self.batch_shape[: rank - n],
            event_shape=self.batch_shape[rank - n :] + self.event_shape,
            validate_args=False,
        )
        return new

    def _simulation_batch(self) -> torch.Size:
        """The batch the simulator runs over: batch shape and reinterpreted dims."""
        return self.batch_shape + self.event_shape[: self._reinterpreted]

    def _describe(self) -> str:
        if self.site_name:
            return f"site '{self.site_name}'"
        name = getattr(self.simulator, "__name__", type(self.simulator).__name__)
        return f"the ImplicitSite with simulator '{name}'"

    def _broadcast_params(self, sample_shape: torch.Size) -> list[Any]:
        out = []
        for p, d in zip(self.params, self.param_event_dims, strict=False):
            if isinstance(p, torch.Tensor):
                ev = p.shape[p.dim() - d :] if d else torch.Size()
                p = p.expand(sample_shape + self._simulation_batch() + ev)
            out.append(p)
        return out

    def _simulate(self, sample_shape: torch.Size) -> torch.Tensor:
        params = self._broadcast_params(sample_shape)
        try:
            if self.executor is not None:
                value = self._simulate_executor(params, sample_shape)
            elif self.vectorized:
                value = self.simulator(*params)
            else:
                value = self._simulate_each(params, sample_shape)
        except SimulatorError:
            raise
        except Exception as err:
            shapes = [
                tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__ for p in params
            ]
            raise SimulatorError(
                f"The simulator of {self._describe()} raised {type(err).__name__}: {err} "
                f"(called with parameters {shapes}"
                f"{'' if self.vectorized else ', one batch element at a time'}). Fix the "
                f"simulator; if it takes one parameter set at a time, pass vectorized=False"
            ) from err
        return self._check_value(value, sample_shape)

    def _simulate_each(self, params: list[Any], sample_shape: torch.Size) -> Any:
        batch = sample_shape + self._simulation_batch()
        n = batch.numel()
        flat: list[torch.Tensor | None] = []
        for p, d in zip(params, self.param_event_dims, strict=False):
            if isinstance(p, torch.Tensor):
                flat.append(param_rows(p, d, n))
            else:
                flat.append(None)
        draws = []
        for i in range(n):
            args = [f[i] if f is not None else p for f, p in zip(flat, params, strict=False)]
            draws.append(self._to_tensor(self.simulator(*args)))
        return self._stack(draws, sample_shape)

    def _simulate_executor(self, params: list[Any], sample_shape: torch.Size) -> torch.Tensor:
        batch = sample_shape + self._simulation_batch()
        values = map_rows(
            self.executor,
            self.simulator,
            params,
            self.param_event_dims,
            batch,
            self.chunksize,
            self._describe(),
        )
        return self._stack([self._to_tensor(v) for v in values], sample_shape)

    def _stack(self, draws: list[torch.Tensor], sample_shape: torch.Size) -> torch.Tensor:
        """One simulation per batch element, stacked to ``sample_shape + batch + event``."""
        if not draws:
            return torch.empty(sample_shape + self.batch_shape + self.event_shape)
        batch = sample_shape + self._simulation_batch()
        return torch.stack(draws).reshape(batch + draws[0].shape)

    def _to_tensor(self, value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise SimulatorError(
                    f"Expected the simulator of {self._describe()} to return a tensor or "
                    f"numpy array of numbers, actual {type(value).__name__}"
                    f"{'' if array.dtype.kind != 'O' else ' (an object array)'}"
                )
            value = torch.as_tensor(array)
        if value.is_floating_point() and value.dtype != torch.get_default_dtype():
            ref = next((p for p in self.params if isinstance(p, torch.Tensor)), None)
            dtype = ref.dtype if ref is not None and ref.is_floating_point() else None
            value = value.to(dtype or torch.get_default_dtype())
        return value

    def _check_value(self, value: Any, sample_shape: torch.Size) -> torch.Tensor:
        value = self._to_tensor(value)
        expected = sample_shape + self.batch_shape + self.event_shape
        if value.shape != expected:
            raise SimulatorError(
                f"Expected the simulator of {self._describe()} to return shape "
                f"{tuple(expected)} (sample_shape + batch_shape + event_shape), "
                f"actual {tuple(value.shape)}. The simulator receives its "
                f"parameters broadcast to the batch shape and must return one "
                f"draw per batch element; set event_shape= for multivariate draws"
            )
        if (
            not self.allow_nonfinite
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ):
            bad = int((~torch.isfinite(value)).sum())
            raise SimulatorError(
                f"The simulator of {self._describe()} returned {bad} NaN or inf "
                f"value(s) out of {value.numel()}. Check its parameters' range "
                f"(e.g. constrain rates to be positive) or clamp its output"
            )
        return value

    def sample(self, sample_shape: _Shape = ()) -> torch.Tensor:
        """Run the simulator without gradients: ``sample_shape + batch_shape + event_shape``."""
        with torch.no_grad():
            return self._simulate(torch.Size(sample_shape))

    def rsample(self, sample_shape: _Shape = ()) -> torch.Tensor:
        """Run the simulator with gradients to its parameters (needs ``reparameterized=True``)."""
        if not self.reparameterized:
            raise NotImplementedError(
                f"{self._describe()} has no rsample: its simulator was not declared "
                f"differentiable. Pass reparameterized=True to ImplicitSite if "
                f"gradients flow through the simulator"
            )
        return self._simulate(torch.Size(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Raise :class:`~pyro_lfvi.ImplicitDensityError`: a simulator has no density."""
        raise ImplicitDensityError(
            f"{self._describe()} is implicit: a simulator with no density, so "
            f"log_prob cannot be evaluated. Losses such as Trace_ELBO need densities; "
            f"train with pyro_lfvi.LFVI(), which only samples implicit sites. Guides "
            f"that evaluate the model's density (AutoGaussian, AutoStructured, "
            f"AutoLaplaceApproximation.laplace_approximation) cannot be used either: use "
            f"AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoIAFNormal or "
            f"AutoDelta"
        )

    def __repr__(self) -> str:
        name = getattr(self.simulator, "__name__", type(self.simulator).__name__)
        return (
            f"ImplicitSite({name}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )
