"""A local static file server for the download scenario, in its own process so that its
work does not share the measured process's interpreter: ``python -m bench.fileserver DIR``
prints the port, then serves until terminated."""

from __future__ import annotations

import functools
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.common import exit_with_parent


class QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a CDN would

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        """Zero-copy, as a CDN would: the server's cost stays out of the measurement."""
        outputfile.flush()
        self.connection.sendfile(source)


def main(folder: str) -> None:
    exit_with_parent()
    handler = functools.partial(QuietHandler, directory=folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
