"""One error tree: every exception class poold defines derives from poold.errors.PooldError
(beside the builtin it refines, so `except ValueError` callers still work), and no two share a
name (an except clause or a log line names exactly one)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import poold
from poold.errors import PooldError


def poold_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(poold.__path__, "poold."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [c for c in vars(module).values()
                  if inspect.isclass(c) and issubclass(c, BaseException)
                  and c.__module__ == info.name]
    return found


def test_every_exception_derives_from_pooldbase() -> None:
    classes = poold_exceptions()
    assert len(classes) > 30  # the walk saw the packages
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, PooldError)]
    assert not outside, outside


def test_exception_names_are_unique() -> None:
    where: dict[str, list[str]] = {}
    for c in poold_exceptions():
        where.setdefault(c.__name__, []).append(c.__module__)
    assert not {n: m for n, m in where.items() if len(m) > 1}
