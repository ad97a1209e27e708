# The web daemon of stack.toml: it calls the api while it imports, before it serves anything.
# The api may not even have started yet: the connection waits in the backlog of the socket
# sd-launch bound for it. No start-up order, no retry loop.
import os
import urllib.request

API_URL = os.environ["API_URL"]
with urllib.request.urlopen(API_URL + "healthz", timeout=30) as reply:
    API_SAID = reply.read().decode().strip()


def app(environ, start_response):
    body = ("web here; at import the api said %r\n" % API_SAID).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
