"""Optuna searches (conf/hparams_search/): each trial's job dir is named by its Optuna trial number.

hydra-optuna-sweeper numbers the jobs of every `-m` from 0, so continuing a study from its storage in the
sweep dir (optuna.db) would write the new trials into the dirs of the first ones, checkpoints included.
The presets add the TrialDirs callback: it makes the sweeper launch each batch of trials as jobs numbered
by their trials, so `<sweep dir>/<trial>` holds that trial and a continued study adds dirs; a continued
study also reseeds the sampler, which would otherwise repeat the first session's random draws. (Hydra accepts
sweepers only from the hydra_plugins package, so this is a callback rather than a subclass in cnnlab.)
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class TrialDirs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

        configure = OptunaSweeperImpl._configure_trials
        if getattr(configure, "by_trial", False):  # patched already (a second multirun in this process)
            return

        def by_trial(sweeper: OptunaSweeperImpl, trials: list[Any], *args: Any, **kw: Any) -> Any:
            if sweeper.job_idx == 0 and trials[0].number > 0:  # continuing: not the first session's draws again
                sweeper.sampler.reseed_rng()
            # the sweeper launches this batch right after, as jobs job_idx, job_idx + 1, ...
            sweeper.job_idx = trials[0].number
            return configure(sweeper, trials, *args, **kw)

        by_trial.by_trial = True  # type: ignore[attr-defined]
        OptunaSweeperImpl._configure_trials = by_trial  # type: ignore[method-assign]
