"""Configuration: the YAML file, validated into typed values with every problem reported at once.

`load_config` is the entry point; the names here are the ones the rest of healerd imports.
"""

from __future__ import annotations

from .._yaml import format_path
from ..modes import Mode
from ..paths import resolve_path
from .loader import load_config
from .models import CheckSpec, Config, ServiceConfig
from .problems import ConfigError

__all__ = ["CheckSpec", "Config", "ConfigError", "Mode", "ServiceConfig", "format_path", "load_config", "resolve_path"]
