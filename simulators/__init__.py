"""User simulators with ground truth, for evaluating policies and off-policy estimators.

- ``model``: the parametric slate user simulator and its vectorised batch API
  (``SlateSimulator``, ``SimulatorConfig``); ``exposure``: fatigue state.
- ``env``: the same world as a ``gymnasium.Env`` (``SlateRecommendationEnv``).
- ``policies``: logging policies with exact propensities (uniform, greedy, softmax/PL,
  ε-mixtures), under ``recsys.policy.Policy`` like the bandits.
- ``ground_truth``: exact (or Monte Carlo with standard error) policy values, optimum, regret.
- ``logged_data``: logged data as a polars frame and as ``recsys.events`` records.
- ``fitting``: fit the simulator to logs with the slate choice likelihood.
- ``obd``: the Open Bandit Dataset (read by ``recsys.obd``) as a log frame; ``study`` and
  ``ope_check``: the OPE checks.
"""
