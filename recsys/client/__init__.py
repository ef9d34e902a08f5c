"""Clients of the serving app: programs that send it HTTP traffic, never serve it.

* ``recsys.client.guard``: the one loopback guard every client passes its URL through (load and
  simulated traffic may only ever reach this machine);
* ``recsys.client.http``: the shared transport: a keep-alive ``aiohttp`` session, JSON posts that
  retry 503 with backoff, and waiting for ``GET /health``;
* ``recsys.client.load``: the open-loop, fixed-rate load generator and its result;
* ``recsys.client.sweep``: the rate sweep that finds the highest rate the server keeps up with;
* ``recsys.client.plots``: their latency plots;
* ``recsys.client.loadtest``: the ``recsys loadtest`` command;
* ``recsys.client.freshness``: the click → served-score freshness probe.

The simulator's users (``simulators.http_traffic``) use the guard and the transport from here.
"""
