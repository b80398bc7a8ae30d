"""`hydra.sweeper._target_` of conf/hydra/sweeper/optuna.yaml: Hydra looks up a sweeper class by this module's name.
Importing it stays cheap (Optuna is imported when a sweep starts): Hydra imports every plugin module on each run."""

from mugpt.studies.optuna_sweeper import OptunaSweeper as _Sweeper


class OptunaSweeper(_Sweeper):
    """Optuna (>= 4) ask/tell over Hydra's launcher: see mugpt.studies.optuna_sweeper."""
