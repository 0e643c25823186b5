"""The Snowflake emulator of docker-compose: fakesnow, prepared for snowgate, behind a shim.

Starts `fakesnow -s` on a loopback port, creates the database, schema and external stage that
snowgate's config names (what a Snowflake admin does once), then serves a proxy in front of it
that fills in the response fields fakesnow leaves out and the Snowflake REST client requires
(never overwriting one it sent): the same shim as tests/common/fakesnow.rs. `GET /ready` answers
200 once the stage exists. Standard library only, besides fakesnow and its connector.

Environment: STAGE_URL (file:// folder of the stage's objects), LISTEN_PORT (8080),
FAKESNOW_PORT (8000), DATABASE (SNOWGATE), SCHEMA (PARTNERS), STAGE (SNOWGATE_STAGE).
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN_PORT = int(os.environ.get("LISTEN_PORT", "8080"))
FAKESNOW_PORT = int(os.environ.get("FAKESNOW_PORT", "8000"))
DATABASE = os.environ.get("DATABASE", "SNOWGATE")
SCHEMA = os.environ.get("SCHEMA", "PARTNERS")
STAGE = os.environ.get("STAGE", "SNOWGATE_STAGE")
STAGE_URL = os.environ.get("STAGE_URL", "file:///stage/snowgate-stage/stage/")
READY = False


def fill(body, pointer, key, value):
    target = body
    for part in [p for p in pointer.split("/") if p]:
        target = target.get(part) if isinstance(target, dict) else None
    if isinstance(target, dict):
        target.setdefault(key, value)


def patch(path, body):
    """Adds what fakesnow leaves out of login and query responses."""
    if not isinstance(body, dict):
        return
    if path.endswith("/session/v1/login-request"):
        fill(body, "/data", "masterToken", "fakesnow-master-token")
        fill(body, "/data", "sessionId", 1)
        fill(body, "/data", "masterValidityInSeconds", 14400)
        fill(body, "/data", "validityInSeconds", 3600)
        fill(body, "/data", "sessionInfo", {})
        fill(body, "/data/sessionInfo", "roleName", "PUBLIC")
    if path.endswith("/queries/v1/query-request"):
        if body.get("success"):
            rowset = (body.get("data") or {}).get("rowset") or []
            total = (body.get("data") or {}).get("total", len(rowset))
            fill(body, "/data", "returned", total)
            fill(body, "/data", "finalRoleName", "PUBLIC")
            fill(body, "/data", "version", 1)
            fill(body, "/data", "parameters", [])
            fill(body, "/data", "rowtype", [])
            fill(body, "/data", "total", len(rowset))
            fill(body, "/data", "statementTypeId", 0)
            fill(body, "/data", "queryId", "")
        else:
            if not body.get("data"):
                body["data"] = {}
            fill(body, "/data", "age", 0)
            fill(body, "/data", "internalError", False)
            fill(body, "/data", "queryId", "")
            fill(body, "/data", "errorCode", body.get("code", "000000"))
            fill(body, "/data", "sqlState", "00000")


class Shim(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        path = self.path.split("?", 1)[0]
        if path == "/ready":
            status = 200 if READY else 503
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        upstream = http.client.HTTPConnection("127.0.0.1", FAKESNOW_PORT, timeout=600)
        try:
            upstream.request(self.command, self.path, body=request_body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        finally:
            upstream.close()
        try:
            value = json.loads(data)
            patch(path, value)
            data = json.dumps(value).encode()
        except ValueError:
            pass
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = forward
    do_POST = forward

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def wait_for_port(port, process):
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"fakesnow exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"fakesnow did not listen on port {port}")


def prepare():
    """Creates the schema and the external stage over the folder the S3 server writes."""
    import snowflake.connector

    connection = snowflake.connector.connect(
        user="admin", password="not-checked", account="local", database=DATABASE, schema=SCHEMA,
        host="127.0.0.1", port=FAKESNOW_PORT, protocol="http",
    )
    try:
        cursor = connection.cursor()
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {DATABASE}.{SCHEMA}")
        cursor.execute(f"CREATE OR REPLACE STAGE {DATABASE}.{SCHEMA}.{STAGE} URL='{STAGE_URL}'")
    finally:
        connection.close()


def main():
    global READY
    fakesnow = os.environ.get("FAKESNOW", "fakesnow")
    process = subprocess.Popen([fakesnow, "-s", "-p", str(FAKESNOW_PORT)])
    wait_for_port(FAKESNOW_PORT, process)
    prepare()
    READY = True
    server = ThreadingHTTPServer(("0.0.0.0", LISTEN_PORT), Shim)
    print(f"snowflake emulator: fakesnow on {FAKESNOW_PORT}, shim on {LISTEN_PORT}, stage {STAGE_URL}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
