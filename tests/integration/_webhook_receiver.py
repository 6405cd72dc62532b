"""A webhook receiver on 127.0.0.1, run as its own process by test_webhooks_process.py:
``python _webhook_receiver.py PORT RECORD FAIL_FIRST`` with the secret in ``RC_TEST_SECRET``.

Every delivery's signature is checked (401 when it does not verify); the first
``FAIL_FIRST`` deliveries are answered 500, the rest 200. Each attempt is a line of JSON in
``RECORD``: the ``webhook-id``, the status answered, the ids of the events it carried."""

from __future__ import annotations

import json
import os
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from release_coordinator import WebhookSignatureError, verify_webhook

PORT, RECORD, FAIL_FIRST = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
SECRET = os.environ["RC_TEST_SECRET"]
seen = 0


async def hook(request: Request) -> Response:
    global seen
    body = await request.body()
    try:
        verify_webhook(SECRET, request.headers, body)
        seen += 1
        status = 500 if seen <= FAIL_FIRST else 200
    except WebhookSignatureError:
        status = 401
    events = [e["id"] for e in json.loads(body)["events"]] if status != 401 else []
    line = {"id": request.headers.get("webhook-id"), "status": status, "events": events}
    with open(RECORD, "a", encoding="utf-8") as out:  # noqa: ASYNC230 - one short line
        out.write(json.dumps(line) + "\n")
    return Response(status_code=status)


app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
