"""Image promotion by evidence (docs/rollouts.md): canary, bake, judgement, rolling refresh, automatic rollback.

`Rollouts` (control) starts, pauses, resumes and aborts them and resumes them after a restart or a takeover;
`RolloutRun` (run) drives one through its stages, acting through its `steps`, `machines` and `refresh`; `record`
holds the record and its view; `views` the images' view.
"""

from .control import Rollouts
from .record import JUDGING, Rollout, RolloutRefused, Stage, rollout_view

__all__ = ["JUDGING", "Rollout", "RolloutRefused", "Rollouts", "Stage", "rollout_view"]
