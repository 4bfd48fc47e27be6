"""Parts chosen by name, by convention: `ctjax/<package>/<name>.py`, no registry.

Models (`config.model.name`), data sources (`config.data.source`) and evaluators
(`config.evaluators[i].type`) are modules found by their name, so adding one is
adding a file. These two functions are the whole mechanism.
"""
import importlib
import pkgutil
from types import ModuleType
from typing import Any


def find(package: str, name: Any, attribute: str | None = None
         ) -> ModuleType | None:
  """The module `package.name` (which must define `attribute`, if given), or None.

  A module that exists but fails to import raises: that is a bug to see, not a
  misspelt name.
  """
  if not (isinstance(name, str) and name.isidentifier()):
    return None
  try:
    module = importlib.import_module(f"{package}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{package}.{name}":
      raise
    return None
  return module if attribute is None or hasattr(module, attribute) else None


def names(package: str, attribute: str | None = None) -> list[str]:
  """The modules of `package` (that define `attribute`, if given), sorted."""
  path = importlib.import_module(package).__path__
  return sorted(info.name for info in pkgutil.iter_modules(path)
                if find(package, info.name, attribute) is not None)
