"""pgcopy: copy the data of one PostgreSQL database into another with the same schema."""

import sys as _sys

__version__ = "0.1.0"

# psycopg2's first import imports the ssl module, only to hand OpenSSL < 1.1 thread callbacks
# to libpq.  Its wheel bundles its own OpenSSL 3, which needs none, so loading Python's ssl
# (and the system's libcrypto behind it) costs every pgcopy process 4 MB for nothing.
# psycopg2 goes on without it when the import fails; later imports of ssl work as usual.
if "psycopg2" not in _sys.modules and "ssl" not in _sys.modules:
    _sys.modules["ssl"] = None
    try:
        import psycopg2  # noqa: F401
    finally:
        del _sys.modules["ssl"]
