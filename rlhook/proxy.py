"""``Proxy``: a value that a run will produce, resolved after the run."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Proxy", "ProxyError"]


class ProxyError(RuntimeError):
    """A proxy resolved before its run executed, or whose module never ran."""


class _Owner(Protocol):
    done: bool
    stopped: bool


class Proxy:
    """A value that a run will produce: ``resolve()`` it after the ``with`` block.

    A module called several times keeps every call (``calls``); ``resolve()`` returns the last one unless
    ``call=`` picks another.
    """

    def __init__(self, run: _Owner, name: str, what: str, call: int = -1) -> None:
        self.run, self.name, self.what, self.call = run, name, what, call
        self.calls: list[Any] = []

    def record(self, value: Any) -> None:
        """Append the value of one call (used by the hooks a run installs)."""
        self.calls.append(value)

    @property
    def fired(self) -> bool:
        """Whether the module ran at least once."""
        return bool(self.calls)

    def current(self) -> Any:
        """The latest value *during* the forward (for a proxy feeding a later module)."""
        if not self.calls:
            raise ProxyError(
                f"{self.what} of {self.name!r} is used before that module ran in the forward; "
                "a proxy can only feed a module that runs after its source"
            )
        in_range = -len(self.calls) <= self.call < len(self.calls)
        return self.calls[self.call] if in_range else self.calls[-1]

    def resolve(self) -> Any:
        """The saved value. Raises ``ProxyError`` before the run or if the module never ran."""
        if not self.run.done:
            raise ProxyError(
                f"{self.what} of {self.name!r} was resolved before the run executed; call resolve() after the "
                "`with hooked.run(td) as run:` block has exited"
            )
        if not self.calls:
            why = " (the forward was stopped before it)" if self.run.stopped else ""
            raise ProxyError(
                f"module {self.name!r} never ran during the forward{why}, so its {self.what} does not exist: "
                "it is unused, called functionally, or skipped"
            )
        if not -len(self.calls) <= self.call < len(self.calls):
            raise ProxyError(f"{self.name!r} ran {len(self.calls)} time(s); call={self.call} does not exist")
        return self.calls[self.call]

    @property
    def value(self) -> Any:
        return self.resolve()

    def __repr__(self) -> str:
        state = "resolved" if self.run.done and self.calls else "pending"
        return f"Proxy({self.what} of {self.name!r}, {state})"
