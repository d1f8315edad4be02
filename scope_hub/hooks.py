"""Forward hooks as scoped resources: attach on enter, remove in ``finally``.

Every scope-hub hook at one hookpoint goes through a single torch hook that
runs a **stack** of functions in attach order, so several replacements compose
(``f2(f1(x))``) and a capture sees exactly what the functions attached before it
produced. Functions map the activation tensor to a new tensor, or return None to
leave it unchanged. ``.output`` hookpoints use a forward hook (the first element
is replaced when a module returns a tuple); ``.input`` hookpoints use a forward
pre-hook on the first positional argument or the ``hidden_states`` keyword.

Primitives:

* :func:`hook` — attach any function (the building block of the others);
* :func:`capture` — read activations into a dict;
* :func:`replace` — swap an activation for ``fn(activation)``;
* :func:`stop_after` — end the forward once a hookpoint has fired (features-only
  runs, harvesting); a stop always runs after every other function at its hookpoint.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    >>> x = torch.ones(1, 2)
    >>> with capture(net, ["1.output"]) as before, replace(net, "1.output", torch.zeros_like):
    ...     with capture(net, ["1.output"]) as after:
    ...         y = net(x)
    >>> torch.equal(before["1.output"], torch.relu(net[0](x))), bool(after["1.output"].abs().sum() == 0)
    (True, True)
    >>> torch.equal(y, net[2](torch.zeros(1, 2)))
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scope_hub.errors import HookpointError, ShapeMismatchError
from scope_hub.hookpoints.base import Hookpoint

__all__ = ["HookFn", "StopResult", "attached_hookpoints", "capture", "hook", "replace", "stop_after"]

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
"""Maps the activation at a hookpoint to a replacement, or returns None to keep it."""


class _StopForward(Exception):
    """Raised by a stop hook to end a forward early; caught by :func:`stop_after` only."""

    def __init__(self, token: object) -> None:
        super().__init__("forward stopped by scope_hub.hooks.stop_after")
        self.token = token


@dataclass(eq=False)
class _Entry:
    fn: HookFn
    last: bool = False  # stop hooks run after every other function at the hookpoint


@dataclass(eq=False)
class _Stack:
    hookpoint: Hookpoint
    entries: list[_Entry] = field(default_factory=list)
    handle: Any = None

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise HookpointError(
                f"hookpoint {self.hookpoint} carries a {type(x).__name__}, not a tensor; pick another hookpoint"
            )
        ordered = [e for e in self.entries if not e.last] + [e for e in self.entries if e.last]
        for entry in ordered:
            y = entry.fn(x)
            if y is None:
                continue
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ShapeMismatchError(
                    f"hook function at {self.hookpoint} returned {got}, expected a tensor of shape {tuple(x.shape)}"
                )
            x = y
        return x


# module -> {"input"|"output": _Stack}; weak so hooked models can still be garbage-collected.
_STACKS: weakref.WeakKeyDictionary[nn.Module, dict[str, _Stack]] = weakref.WeakKeyDictionary()


def _output_hook(stack: _Stack) -> Callable[..., Any]:
    def forward_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, (tuple, list)):
            y = stack.run(output[0])
            if y is output[0]:
                return None
            if hasattr(output, "_fields"):  # namedtuple: positional constructor
                return type(output)(y, *output[1:])
            return type(output)([y, *output[1:]])
        y = stack.run(output)
        return None if y is output else y

    return forward_hook


def _input_hook(stack: _Stack) -> Callable[..., Any]:
    def forward_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            y = stack.run(args[0])
            return None if y is args[0] else ((y, *args[1:]), kwargs)
        if "hidden_states" in kwargs:
            x = kwargs["hidden_states"]
            y = stack.run(x)
            return None if y is x else (args, {**kwargs, "hidden_states": y})
        raise HookpointError(
            f"{stack.hookpoint} was called without a positional argument or hidden_states keyword; "
            f"hook the output of the module before it instead"
        )

    return forward_pre_hook


def _attach(model: nn.Module, hookpoint: Hookpoint | str, entry: _Entry) -> Callable[[], None]:
    hp = Hookpoint.parse(hookpoint)
    module = hp.resolve(model)
    stacks = _STACKS.setdefault(module, {})
    stack = stacks.get(hp.io)
    if stack is None:
        stack = _Stack(hp)
        if hp.io == "output":
            stack.handle = module.register_forward_hook(_output_hook(stack))
        else:
            stack.handle = module.register_forward_pre_hook(_input_hook(stack), with_kwargs=True)
        stacks[hp.io] = stack
    stack.entries.append(entry)

    def detach() -> None:
        stack.entries.remove(entry)
        if not stack.entries:
            stack.handle.remove()
            if stacks.get(hp.io) is stack:
                del stacks[hp.io]

    return detach


def attached_hookpoints(model: nn.Module) -> list[str]:
    """Hookpoints of ``model`` that currently carry scope-hub hooks (empty outside every context).

    Example:
        >>> attached_hookpoints(torch.nn.Linear(1, 1))
        []
    """
    names = {module: name for name, module in model.named_modules()}
    return sorted(f"{names[m]}.{io}" for m, stacks in list(_STACKS.items()) if m in names for io in stacks)


@contextmanager
def hook(model: nn.Module, hookpoint: Hookpoint | str, fn: HookFn) -> Iterator[None]:
    """Run ``fn`` on the activation at ``hookpoint`` during every forward inside the block.

    ``fn`` returns a replacement tensor of the same shape, or None to keep the
    activation. Functions at one hookpoint run in attach order.

    Example:
        >>> lin = torch.nn.Sequential(torch.nn.Identity())
        >>> with hook(lin, "0.output", lambda t: t * 2):
        ...     lin(torch.ones(1)).item()
        2.0
    """
    detach = _attach(model, hookpoint, _Entry(fn))
    try:
        yield
    finally:
        detach()


@contextmanager
def capture(
    model: nn.Module, hookpoints: Iterable[Hookpoint | str], *, detach: bool = True, accumulate: bool = False
) -> Iterator[dict[str, Any]]:
    """Record the activations at ``hookpoints``; yields a dict keyed by ``str(hookpoint)``.

    By default each forward overwrites the entry (the last forward wins);
    ``accumulate=True`` keeps a list with one tensor per forward (e.g. one per
    ``generate`` step). ``detach=False`` keeps the autograd graph. Tensors are not
    copied: transformers builds a new residual tensor per layer, so this is safe
    for the supported families and costs nothing.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4))
        >>> with capture(net, ["0.input", "0.output"]) as acts:
        ...     _ = net(torch.ones(2, 3))
        >>> {k: tuple(v.shape) for k, v in acts.items()}
        {'0.input': (2, 3), '0.output': (2, 4)}
    """
    acts: dict[str, Any] = {}
    hps = [Hookpoint.parse(h) for h in hookpoints]

    def recorder(key: str) -> HookFn:
        def record(x: torch.Tensor) -> None:
            value = x.detach() if detach else x
            if accumulate:
                acts.setdefault(key, []).append(value)
            else:
                acts[key] = value

        return record

    with ExitStack() as stack:
        for hp in hps:
            stack.enter_context(hook(model, hp, recorder(str(hp))))
        yield acts


@contextmanager
def replace(model: nn.Module, hookpoint: Hookpoint | str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at ``hookpoint`` by ``fn(activation)`` inside the block.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
        >>> with replace(net, "0.output", lambda t: t + 1), replace(net, "1.input", lambda t: t * 10):
        ...     net(torch.zeros(1)).item()
        10.0
    """

    def checked(x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        if y is None:
            raise HookpointError(
                f"replace() function at {hookpoint} returned None; return the new tensor (or use hook())"
            )
        return y

    with hook(model, hookpoint, checked):
        yield


@dataclass
class StopResult:
    """What :func:`stop_after` yields: ``stopped`` tells whether the forward was cut short."""

    hookpoint: Hookpoint
    stopped: bool = False


@contextmanager
def stop_after(model: nn.Module, hookpoint: Hookpoint | str) -> Iterator[StopResult]:
    """End any forward inside the block once ``hookpoint`` has fired (after its other hooks ran).

    The forward call raises a private exception that this context swallows, so
    the call returns nothing and the statements after it inside the block are
    skipped: put the forward last, read activations from :func:`capture`.
    Use ``adapter.stop_hookpoint(...)`` to pick the hookpoint.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(1, 1))
        >>> with capture(net, ["0.output"]) as acts, stop_after(net, "0.output") as run:
        ...     net(torch.ones(1))
        >>> run.stopped, acts["0.output"].item()
        (True, 1.0)
    """
    hp = Hookpoint.parse(hookpoint)
    result = StopResult(hp)
    token = object()  # so nested stop_after contexts only catch their own stop

    def stop(x: torch.Tensor) -> None:
        raise _StopForward(token)

    detach = _attach(model, hp, _Entry(stop, last=True))
    try:
        yield result
    except _StopForward as exc:
        if exc.token is not token:
            raise
        result.stopped = True
    finally:
        detach()
