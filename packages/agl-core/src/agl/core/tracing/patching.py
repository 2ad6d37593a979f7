"""Monkey-patching for the instrumentor packages: one `Patcher` per package, given its patches.

Every agl instrumentor patches the same way, so it is written once, here:
- lazily: a patch is applied when its module is imported (at once if it already is), so an
  instrumentor never imports its framework; post-import hooks cannot be removed, so each module
  gets one, and it does nothing while the patcher is inactive;
- by the name the module was imported under (a framework may overwrite a module's ``__name__``);
- idempotently: a method already patched is left alone;
- inside another library's wrapper: where one (OpenInference's, say) wrapped the method already,
  ours goes next to the original, so their span encloses ours and a layer below finds agl's
  span current;
- fully reversibly: `Patcher.deactivate` puts every original back, except under a wrapper that
  another library put over ours afterwards, which then passes through (each wrapper checks its
  package's ``active`` flag).
A patch that no longer fits the framework's version is logged at debug level and skipped; the
other patches still apply.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import wrapt

# wrapt 2's wrappers derive from BaseObjectProxy (its ObjectProxy is a subclass); wrapt 1 has only ObjectProxy.
_PROXIES = (getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy), wrapt.FunctionWrapper)
_MISSING = object()


@dataclass(frozen=True)
class Patch:
    """``owner.attribute`` of ``module`` wrapped by a wrapt wrapper ``wrapper(wrapped, instance, args, kwargs)``;
    ``owner`` None for a function of the module itself."""

    module: str
    owner: str | None
    attribute: str
    wrapper: Callable[..., Any]


@dataclass(frozen=True)
class FamilyPatch:
    """Methods of a class and of all its subclasses, present and future, wherever one defines them
    (abstract ones skipped): for interfaces every implementation overrides, such as a model client."""

    module: str
    owner: str
    methods: Mapping[str, Callable[..., Any]]


@dataclass(frozen=True)
class Replacement:
    """A function of ``module`` replaced by ``make(original)``: for a context manager, which a
    wrapt wrapper cannot enter into."""

    module: str
    name: str
    make: Callable[[Callable[..., Any]], Callable[..., Any]]


AnyPatch = Patch | FamilyPatch | Replacement


@dataclass
class _Applied:
    original: Any
    replacement: Any
    holder: Any
    """The foreign wrapper ours sits inside, or None."""


class Patcher:
    """Applies ``patches`` (and calls ``on_import[module](module)`` when one of those modules is
    imported) while active."""

    def __init__(
        self,
        patches: Sequence[AnyPatch],
        logger: logging.Logger,
        on_import: Mapping[str, Callable[[ModuleType], None]] | None = None,
    ) -> None:
        self.patches = tuple(patches)
        self.on_import = dict(on_import or {})
        self.logger = logger
        self.active = False
        self._applied: dict[tuple[Any, str], _Applied] = {}
        self._families: dict[type, Any] = {}
        """base class -> the ``__init_subclass__`` it had in its own namespace (or `_MISSING`)."""
        self._hooked: set[str] = set()

    def activate(self) -> None:
        self.active = True
        for name in dict.fromkeys([*(patch.module for patch in self.patches), *self.on_import]):
            if name in sys.modules:
                self._apply(name, sys.modules[name])
            elif name not in self._hooked:
                self._hooked.add(name)
                wrapt.register_post_import_hook(functools.partial(self._apply, name), name)

    def deactivate(self) -> None:
        self.active = False
        for base, own in list(self._families.items()):
            if own is _MISSING:
                type.__delattr__(base, "__init_subclass__")
            else:
                type.__setattr__(base, "__init_subclass__", own)
            del self._families[base]
        for (owner, name), applied in list(self._applied.items()):
            current = owner.__dict__.get(name)
            if applied.holder is not None and getattr(applied.holder, "__wrapped__", None) is applied.replacement:
                applied.holder.__wrapped__ = applied.original
            # Ours, or ours as bound by ``getattr(cls, name)``: what a library that wrapped over us
            # saved that way puts back when it uninstruments after us.
            elif current is applied.replacement or getattr(current, "_self_parent", None) is applied.replacement:
                _set(owner, name, applied.original)
            else:
                continue
            del self._applied[(owner, name)]

    # --- applying ---

    def _apply(self, name: str, module: ModuleType) -> None:
        if not self.active:
            return
        hook = self.on_import.get(name)
        if hook is not None:
            self._safely(name, hook, module)
        for patch in self.patches:
            if patch.module != name:
                continue
            if isinstance(patch, Patch):
                self._safely(patch, self._patch, module, patch)
            elif isinstance(patch, FamilyPatch):
                self._safely(patch, self._patch_family, module, patch)
            else:
                self._safely(patch, self._replace, module, patch)

    def _safely(self, what: object, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # another version of the framework: this patch does not apply, the others still do
            self.logger.debug("agl could not patch %r", what, exc_info=True)

    def _patch(self, module: ModuleType, patch: Patch) -> None:
        owner = module if patch.owner is None else getattr(module, patch.owner)
        self.wrap(owner, patch.attribute, patch.wrapper)

    def wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        """Wrap ``owner.name`` (defined on ``owner`` itself) with ``wrapper``, once."""
        if (owner, name) in self._applied:
            return
        holder, original = None, owner.__dict__[name]
        while isinstance(original, _PROXIES) and hasattr(original, "__wrapped__"):
            holder, original = original, original.__wrapped__
        if getattr(original, "__isabstractmethod__", False):
            return
        replacement = wrapt.FunctionWrapper(original, wrapper)
        if holder is None:
            _set(owner, name, replacement)
        else:
            holder.__wrapped__ = replacement
        self._applied[(owner, name)] = _Applied(original, replacement, holder)

    def _replace(self, module: ModuleType, patch: Replacement) -> None:
        if (module, patch.name) in self._applied:
            return
        original = module.__dict__[patch.name]
        replacement = patch.make(original)
        setattr(module, patch.name, replacement)
        self._applied[(module, patch.name)] = _Applied(original, replacement, None)

    def _patch_class(self, cls: type, patch: FamilyPatch) -> None:
        for method, wrapper in patch.methods.items():
            if method in cls.__dict__:
                self._safely(f"{cls.__qualname__}.{method}", self.wrap, cls, method, wrapper)

    def _patch_family(self, module: ModuleType, patch: FamilyPatch) -> None:
        base = getattr(module, patch.owner)
        if base in self._families:
            return
        pending = [base]
        while pending:
            cls = pending.pop()
            self._patch_class(cls, patch)
            pending.extend(cls.__subclasses__())
        own = base.__dict__.get("__init_subclass__", _MISSING)
        patcher = self

        def __init_subclass__(cls: type, **kwargs: Any) -> None:
            if own is _MISSING:
                super(base, cls).__init_subclass__(**kwargs)
            else:
                own.__get__(None, cls)(**kwargs)
            if patcher.active:
                patcher._patch_class(cls, patch)

        type.__setattr__(base, "__init_subclass__", classmethod(__init_subclass__))
        self._families[base] = own


def _set(owner: Any, name: str, value: Any) -> None:
    """Set on a class past its metaclass (pydantic's intercepts some names), or on a module."""
    if isinstance(owner, type):
        type.__setattr__(owner, name, value)
    else:
        setattr(owner, name, value)
