"""Environment names: a built-in, an installed package's entry point, or an import path.

    toy_terminal               a built-in (BUILTIN_ENVS)
    my_env                     an entry point in the group `hillclimb.envs` of an installed package
    package.module:attr        an import path: an `EnvPackage`, or a bare environment class

Each resolves to one `EnvPackage` (the class a sandbox serves, and its task suite), so the
sandbox's server and the orchestrator's rollouts look up the same name the same way
(`load_suite`: the task suite a name gives rollouts).
Built-ins are entries of the same kind: hillclimb's own environments have no privilege.
"""

from __future__ import annotations

from difflib import get_close_matches
from importlib.metadata import EntryPoint, entry_points

from envs.authoring.packages import EnvPackage, import_object
from envs.authoring.tasks import TaskSuite
from hillclimb.errors import TargetNotFoundError

ENTRY_POINT_GROUP = "hillclimb.envs"

BUILTIN_ENVS: dict[str, EnvPackage] = {
    "toy_terminal": EnvPackage("envs.builtin.toy_terminal:ToyTerminalEnv", "envs.builtin.toy_terminal.tasks:SUITE"),
    "terminal": EnvPackage("envs.builtin.terminal:TerminalEnv", "envs.builtin.terminal.tasks:SUITE"),
    "inventory": EnvPackage("envs.builtin.inventory:InventoryEnv", "envs.builtin.inventory.tasks:SUITE"),
    "probe": EnvPackage("envs.builtin.probe:ProbeEnv"),
}
"""Built-in environments by name; they hold import paths, so listing them imports nothing."""


def installed_envs() -> dict[str, EntryPoint]:
    """The `hillclimb.envs` entry points of installed packages, by name (built-in names are not shadowed)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN_ENVS}


def is_named_env(target: str) -> bool:
    """Whether `target` is a built-in or an installed environment's name (not an import path)."""
    return target in BUILTIN_ENVS or target in installed_envs()


def find_env(target: str) -> EnvPackage:
    """What `target` names; errors list what was tried and the closest known names."""
    if target in BUILTIN_ENVS:
        return BUILTIN_ENVS[target]
    installed = installed_envs()
    if target in installed:
        return _as_package(_load(installed[target]), f"entry point {target} = {installed[target].value!r}")
    if ":" not in target:
        known = sorted({*BUILTIN_ENVS, *installed})
        close = get_close_matches(target, known, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise TargetNotFoundError(
            f"unknown environment {target!r}: not a built-in ({', '.join(sorted(BUILTIN_ENVS))}), not an installed "
            f"{ENTRY_POINT_GROUP!r} entry point ({', '.join(sorted(installed)) or 'none installed'}), and not an "
            f"import path 'package.module:Name' (an EnvPackage or an environment class){hint}"
        )
    return _as_package(import_object(target, what="environment"), f"import path {target!r}")


def resolve_env_class(target: str) -> type:
    """The environment class named by `target` (what a sandbox serves)."""
    return find_env(target).env_class()


def load_suite(env: str) -> TaskSuite:
    """The task suite of the environment named `env` (a built-in name, a `hillclimb.envs` entry
    point, or an import path); errors say how to attach a suite to a bare environment class, or,
    for a built-in without one, which built-ins have one."""
    package = find_env(env)
    if package.suite is None and env in BUILTIN_ENVS:  # not the user's to give one, as the general error says
        with_tasks = ", ".join(sorted(name for name, p in BUILTIN_ENVS.items() if p.suite is not None))
        raise TargetNotFoundError(
            f"the built-in environment {env!r} has no task suite: it is served (`hillclimb env serve {env}`), not "
            f"rolled out; the built-ins with tasks are {with_tasks}"
        )
    return package.task_suite(env)


def class_path(cls: type) -> str:
    """'module:Class': how a claimed server names the environment it serves, and how its claimant checks it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _load(entry: EntryPoint) -> object:
    try:
        return entry.load()
    except (ImportError, AttributeError) as e:
        raise TargetNotFoundError(
            f"the {ENTRY_POINT_GROUP!r} entry point {entry.name} = {entry.value!r} does not load: {e}"
        ) from e


def _as_package(found: object, source: str) -> EnvPackage:
    if isinstance(found, EnvPackage):
        return found
    if isinstance(found, type):
        return EnvPackage(class_path(found))
    raise TargetNotFoundError(
        f"{source} names an object of type {type(found).__name__}, not an EnvPackage or an environment class"
    )
