"""One module per method; importing this package registers every module in it."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "common":
        importlib.import_module(f"{__name__}.{_info.name}")
