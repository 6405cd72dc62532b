"""One relay of ``test_end_to_end.py``: a RolloutManager that is the child of a parent over HTTP.

Run as::

    python tests/integration/_e2e_relay.py --parent URL --relay-id ID --area GEOJSON

It builds a local :class:`RolloutManager`, a :class:`Relay` of it under ``HttpParent(URL)``
(polling every 0.2 s, reporting ``--area`` until a child registered) and serves
``rollout_app(manager, relay=relay, lifespan=True)``: the app's startup loads the manager and
runs the relay (which polls its parent and ticks the local manager) instead of a plain ticker;
its shutdown stops it. The operator API takes ``$RC_E2E_OPERATOR_TOKEN``.

Listens on 127.0.0.1 at a port the OS picks and logs it (see ``_e2e_serving``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

from _e2e_serving import base_url, configure_logging, listen, serve

from release_coordinator.errors import ReleaseCoordinatorError
from release_coordinator.rollout.geo import Area
from release_coordinator.rollout.manager import RolloutManager
from release_coordinator.rollout.relay import Relay
from release_coordinator.server.rollout_app import rollout_app
from release_coordinator.transports.http import HttpParent

log = logging.getLogger("e2e.relay")


class LoggedRelay(Relay):
    """A Relay that logs an unexpected exception of a round before it ends :meth:`Relay.run`
    (which carries on after ReleaseCoordinatorError only): the test then shows why."""

    async def sync(self, *, hinted: bool = False) -> None:
        try:
            await super().sync(hinted=hinted)
        except ReleaseCoordinatorError:
            raise
        except Exception:
            log.exception("relay %s: a round failed", self.id)
            raise


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parent", required=True, help="the parent's base URL")
    parser.add_argument("--relay-id", required=True)
    parser.add_argument("--area", required=True, help="GeoJSON polygon")
    parser.add_argument("--interval", type=float, default=0.2)
    options = parser.parse_args()
    configure_logging()
    token = os.environ["RC_E2E_OPERATOR_TOKEN"]
    sock = listen()
    # the children stop polling once their release ended: never count them lost in a test
    manager = RolloutManager(lost_after=600)
    async with HttpParent(options.parent, timeout=5.0) as parent:
        relay = LoggedRelay(
            manager,
            parent,
            relay_id=options.relay_id,
            area=Area.from_geojson(json.loads(options.area)),
            interval=options.interval,
        )
        app = rollout_app(manager, operator_tokens=[token], relay=relay, lifespan=True)
        log.info("relay %s at %s under %s", options.relay_id, base_url(sock), options.parent)
        await serve(app, sock, f"relay {options.relay_id}")


if __name__ == "__main__":
    asyncio.run(main())
