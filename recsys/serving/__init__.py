"""The serving app: a Ray Serve HTTP API that scores with the newest shard snapshot and logs every
slate with its propensities (``recsys.serving.app``, ``recsys.serving.service``)."""
