"""How far healerd may act: observe (classify and alert), dry-run (say what it would do), auto."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    OBSERVE = "observe"
    DRY_RUN = "dry-run"
    AUTO = "auto"
