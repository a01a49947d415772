"""Model references: the user's own code that builds the fusion module, named as ``FILE.py:FACTORY`` or
``package.module:FACTORY``.

The code is imported on purpose, as Polygraphy's ``--model-type`` loader scripts are: a reference is
trusted code the user points at, and ``FACTORY()`` returns the ``torch.nn.Module`` (its weights come from
inside the factory, e.g. a safetensors file). Nothing is ever unpickled. A bundle records the reference and
the sha256 of the file that defines it, so a later stage can re-load it and refuse a file that changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionrt.bundle.manifest import sha256_file
from fusionrt.errors import InputError

__all__ = ["ModelReference"]

FLAG = "--model"
FORM = "FILE.py:FACTORY or package.module:FACTORY"


@dataclass(frozen=True)
class ModelReference:
    """``module`` is a file path (ending in ``.py``) or a dotted module name; ``factory`` a callable in it."""

    module: str
    factory: str

    @classmethod
    def parse(cls, text: str, where: str = FLAG) -> ModelReference:
        """Parse ``FILE.py:FACTORY`` / ``package.module:FACTORY``; :class:`InputError` naming ``where`` otherwise."""
        module, sep, factory = str(text).rpartition(":")
        if not sep or not module or not factory.isidentifier():
            raise InputError(where, FORM, repr(text))
        if not module.endswith(".py") and not all(part.isidentifier() for part in module.split(".")):
            raise InputError(where, FORM, repr(text))
        return cls(module, factory)

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")

    def __str__(self) -> str:
        return f"{self.module}:{self.factory}"

    def resolved(self) -> ModelReference:
        """A file reference with an absolute path (what a bundle records, valid from any working directory)."""
        return ModelReference(str(Path(self.module).resolve()), self.factory) if self.is_file else self

    def defining_file(self, where: str = FLAG) -> Path:
        """The file that defines the factory: the path itself, or the module's source file (found, not run)."""
        if self.is_file:
            path = Path(self.module)
            if not path.is_file():
                raise InputError(where, f"a Python file ({FORM})", f"no file at {path}")
            return path.resolve()
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError) as exc:
            raise InputError(where, f"an importable module ({FORM})", f"{self.module!r}: {exc}") from exc
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise InputError(where, f"an importable module with a source file ({FORM})", repr(self.module))
        return Path(spec.origin).resolve()

    def sha256(self, where: str = FLAG) -> str:
        return sha256_file(self.defining_file(where))

    def record(self, where: str = FLAG) -> dict[str, str]:
        """What a manifest keeps: the (resolved) reference, its defining file and that file's sha256."""
        file = self.defining_file(where)
        return {"reference": str(self.resolved()), "file": str(file), "file_sha256": sha256_file(file)}

    def _import(self, where: str) -> Any:
        if not self.is_file:
            try:
                return importlib.import_module(self.module)
            except Exception as exc:
                raise InputError(where, f"an importable module ({FORM})",
                                 f"{self.module!r}, whose import raised {type(exc).__name__}: {exc}") from exc
        path = self.defining_file(where)
        # A private module name per file content: two references to different files never share a module.
        name = "fusionrt_user_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InputError(where, f"a Python file ({FORM})", f"{path}, which Python cannot load")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # The file's folder on sys.path while it runs, so it can import its sibling files.
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise InputError(where, f"a Python file that runs ({FORM})",
                             f"{path}, which raised {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.parent))
        return module

    def load(self, where: str = FLAG) -> Any:
        """Import the module and return ``FACTORY()``: the user's ``torch.nn.Module``."""
        module = self._import(where)
        factory = getattr(module, self.factory, None)
        if not callable(factory):
            raise InputError(where, f"a callable {self.factory!r} in {self.module}",
                             f"{type(factory).__name__ if factory is not None else 'nothing'} of that name")
        try:
            model = factory()
        except Exception as exc:
            raise InputError(where, f"{self}() returning a torch.nn.Module",
                             f"a call that raised {type(exc).__name__}: {exc}") from exc
        if not all(hasattr(model, attr) for attr in ("state_dict", "eval", "forward")):
            raise InputError(where, f"{self}() returning a torch.nn.Module", type(model).__name__)
        return model
