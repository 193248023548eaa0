"""Every transfer method, one module each; importing this package imports (and so registers) all of them, so a
new method is one module here plus one YAML in configs/transfer/."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
