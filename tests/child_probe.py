"""A pgcopy child (see pgcopy.child) that reports how it was started, for test_cli."""

import sys
import threading

from pgcopy import channel


def main() -> None:
    sock, _ = channel.child_start()
    import psycopg2  # found on the parent's path without site's help

    from pgcopy.worker import usage

    modules = sorted(sys.modules)  # what a worker has imported, before it uses anything more
    got = {"site": "site" in sys.modules, "path": sys.path, "psycopg2": psycopg2.__file__, "usage": usage()}
    threads = [t.name for t in threading.enumerate()]
    channel.send(sock, {**got, "modules": modules, "threads": threads})
