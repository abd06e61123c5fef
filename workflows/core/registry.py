"""The registry: (name, version) → definition, and the one answer to which definition decides a
run (`definition_of`). The process-wide `registry` is used by the callers of the core (runtime,
operations, interfaces); the core itself is given the definitions it needs."""
from __future__ import annotations

from typing import Protocol

from workflows.core.child import Child
from workflows.core.errors import DefinitionError, UnknownSaga, UnknownSagaVersion, VersionConflict
from workflows.core.nodes import Parallel
from workflows.core.saga import Saga
from workflows.core.shape import conflict_message


class RunOf(Protocol):
    """A run, or a view of one: what names the definition that decides it."""

    @property
    def saga_type(self) -> str: ...

    @property
    def saga_version(self) -> int: ...


class SagaRegistry:
    """(name, version) → definition. The orchestrator and every worker look definitions up here:
    `get(name)` is the newest version, `get(name, version)` the one a run started with."""

    def __init__(self) -> None:
        self._sagas: dict[str, dict[int, Saga]] = {}

    def register(self, saga: Saga) -> Saga:
        """Register `saga`; the same shape under the same name and version again (a module imported
        twice) returns the one registered; another shape raises `VersionConflict` saying what changed."""
        if not isinstance(saga, Saga):
            raise DefinitionError(f"only Saga values can be registered (got {saga!r})")
        versions = self._sagas.setdefault(saga.name, {})
        existing = versions.get(saga.version)
        if existing is not None:
            if existing.fingerprint != saga.fingerprint:
                raise VersionConflict(conflict_message(saga.name, saga.version, existing.shape, saga.shape,
                                                       "registered in this process"))
            if existing != saga:
                raise DefinitionError(
                    f"saga {saga.name!r} version {saga.version} is already registered in this process with the "
                    "same shape but other retry policies, timeouts, deadline or models: a process holds one "
                    "definition per version, declare it once")
            return existing
        for node in saga.steps:  # a child declared as a Saga value is registered with its parent
            for kid in (node.steps if isinstance(node, Parallel) else (node,)):
                if isinstance(kid, Child) and isinstance(kid.saga, Saga):
                    self.register(kid.saga)
        versions[saga.version] = saga
        return saga

    def definition_of(self, run: RunOf) -> Saga:
        """The definition that decides `run`: its saga type at the version it started with (or was
        moved to), never the newest. `UnknownSagaVersion` if this process does not hold it."""
        return self.get(run.saga_type, run.saga_version)

    def child_definition(self, node: Child) -> Saga:
        """The definition the child of `node` starts on: the `Saga` it declares, else the version
        of the named saga it declares, else the newest registered (a new run, as `start_saga`)."""
        if isinstance(node.saga, Saga):
            return node.saga
        return self.get(node.saga_name, node.version) if node.version is not None else self.newest(node.saga_name)

    def newest(self, name: str) -> Saga:
        """The newest version of `name`: what a new run starts on when no version is asked for."""
        return self.get(name)

    def definitions(self) -> list[Saga]:
        """Every registered version of every saga, by name then version."""
        return [v[n] for _, v in sorted(self._sagas.items()) for n in sorted(v)]

    def get(self, name: str, version: int | None = None) -> Saga:
        """Version `version` of `name` (None: the newest; the library says `newest` for that)."""
        versions = self._sagas.get(name)
        if not versions:
            known = ", ".join(sorted(self._sagas)) or "none"
            raise UnknownSaga(f"unknown saga {name!r} (registered: {known})")
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            have = ", ".join(str(v) for v in sorted(versions))
            raise UnknownSagaVersion(f"saga {name!r} has no version {version} in this process (it has: {have})",
                                     name, version) from None

    def has(self, name: str, version: int) -> bool:
        return version in self._sagas.get(name, {})

    def unregister(self, name: str, version: int) -> Saga:
        """Take a version out of this process (a worker that must stop taking it; tests). Returns it."""
        try:
            return self._sagas.get(name, {}).pop(version)
        except KeyError:
            raise UnknownSagaVersion(f"saga {name!r} has no version {version} in this process", name,
                                     version) from None

    def versions(self, name: str) -> list[int]:
        """The versions of `name` registered, oldest first (empty if none)."""
        return sorted(self._sagas.get(name, {}))

    def held(self) -> dict[str, list[int]]:
        """Every saga name and the versions registered (what a worker announces)."""
        return {n: sorted(v) for n, v in sorted(self._sagas.items()) if v}

    def names(self) -> list[str]:
        return sorted(n for n, v in self._sagas.items() if v)

    def snapshot(self) -> dict[str, dict[int, Saga]]:
        """A copy of what is registered, for `restore` (a test that registers or unregisters)."""
        return {name: dict(versions) for name, versions in self._sagas.items()}

    def restore(self, snapshot: dict[str, dict[int, Saga]]) -> None:
        """Exactly what `snapshot` held is registered again, nothing else."""
        self._sagas = {name: dict(versions) for name, versions in snapshot.items()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._sagas.get(name))


registry = SagaRegistry()
"""The process-wide registry `Saga` definitions are registered in by `register_saga`."""


def register_saga(saga: Saga) -> Saga:
    return registry.register(saga)


def definition_of(run: RunOf) -> Saga:
    """The definition that decides `run` (its type and the version it recorded), from the process's
    registry: what every caller outside the core uses to get it."""
    return registry.definition_of(run)


def child_definition(node: Child) -> Saga:
    """The definition a `Child` step starts its child on, from the process's registry."""
    return registry.child_definition(node)
