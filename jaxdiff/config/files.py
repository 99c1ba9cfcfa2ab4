"""Config files by path, and saved run configs on top of today's defaults."""
from __future__ import annotations

import importlib.util
import os

from ml_collections import ConfigDict

from jaxdiff.config.defaults import get_config


def load_config_file(spec: str) -> ConfigDict:
    """"configs/tiny_coder.py" or "configs/tiny_coder.py:runlocal" -> the file's get_config(arg), as
    `--config` loads it (the file is imported by path: no package or sys.path entry needed)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such config file")
    name = "_jaxdiff_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{path}: defines no get_config()")
    return module.get_config(arg or None)


def with_defaults(saved: dict) -> ConfigDict:
    """A saved run config (a workdir's JSON) on top of today's defaults, so a workdir written before
    a field existed still loads; the saved values win."""
    c = get_config()

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and k in dst and isinstance(dst[k], ConfigDict):
                merge(dst[k], v)
            else:
                with dst.unlocked():
                    dst[k] = v

    merge(c, saved)
    return c
