"""The slow loop: models trained from the logs that correct exposure bias and noisy feedback.

- ``dataset`` (the data contract), ``data`` (lake, Coat, Open Bandit Dataset, FINN.no; splits and
  PLD noise; ``recsys.obd`` reads the Open Bandit Dataset's files), ``sources`` (a spec's data
  and propensities) and ``prepared`` (the data set with its propensities, as training and
  evaluation take it);
- ``propensity`` and ``weights``: P(observed) estimators, clipping, ESS, diagnostics;
- ``models`` (biased MF, two-tower), ``losses`` and ``objectives`` (naive/IPS/SNIPS/DR-JL/KB,
  BCE/BPR/Rel-MF, T-CE/R-CE, PLD);
- ``spec`` (the ``[train]`` table), ``training`` (one run), ``ray_training`` (runs on Ray Train),
  ``evaluation``, ``run_tracking`` and ``registry`` (mlflow), ``runner``, ``reproduce``, ``cli``.

It reads the Parquet lake, never Kafka, and never imports ``streaming`` or ``simulators``.
"""
