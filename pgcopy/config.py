"""Config files: defaults for any long option, and named profiles.

``--config FILE``, else ``$PGCOPY_CONFIG``, else ``./pgcopy.toml`` when it exists (TOML,
read with the standard library's tomllib).  Top-level keys are defaults for the command's
long options (``parallel = 2``, ``lock_timeout = "10s"``, ``include = ["public.*"]``);
``[profiles.NAME]`` tables, picked with ``--profile NAME``, override them; the command line
wins over both.  ``$VAR`` and ``${VAR}`` in strings are expanded from the environment.  A
file that holds a password must be private (mode 0600, owned by the user), as libpq
demands of ``.pgpass``.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

from pgcopy.errors import UsageError

DEFAULT_FILE = "pgcopy.toml"
_PASSWORD = re.compile(r"password\s*=|://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)


def locate(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("PGCOPY_CONFIG")
    if env:
        return Path(env)
    here = Path(DEFAULT_FILE)
    return here if here.exists() else None


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def load(path: Path, profile: str | None) -> dict:
    """The merged settings of ``path`` for ``profile``; refuses what it cannot trust."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"config file {path}: {exc.strerror}") from None
    import tomllib  # only when there is a file: 0.6 MB of RSS otherwise spent in every run

    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    if any(_PASSWORD.search(s) for s in _strings(data)):
        st = path.stat()
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise UsageError(
                f"config file {path} holds a password but is readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):o}): chmod 600 {path}, or use ~/.pgpass or a service file"
            )
    profiles = data.pop("profiles", {})
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise UsageError(f"config file {path} has no profile {profile!r} (profiles: {known})")
        data.update(profiles[profile])
    return {k.replace("-", "_"): _expand(v) for k, v in data.items()}


def _expand(value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def apply(parser: argparse.ArgumentParser, settings: dict, where: Path) -> None:
    """Make ``settings`` the parser's defaults: values are checked by the options' own
    types, exactly as if typed (the command line still wins)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}
    defaults = {}
    for key, value in settings.items():
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted(k for k in actions if k != "config" and k != "profile"))
            raise UsageError(f"config file {where}: unknown option {key!r} (options: {known})")
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UsageError(f"config file {where}: {key} must be true or false")
            defaults[key] = value
        elif isinstance(action, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            defaults[key] = [str(v) for v in values]
        else:
            text = str(value)
            try:
                defaults[key] = action.type(text) if action.type else text
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise UsageError(f"config file {where}: {key}: {exc}") from None
            if action.choices is not None and defaults[key] not in action.choices:
                raise UsageError(
                    f"config file {where}: {key} must be one of {', '.join(map(str, action.choices))}"
                )
    parser.set_defaults(**defaults)


def mask(text: str) -> str:
    """A connection string with its password hidden."""
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1*****", text, flags=re.IGNORECASE)
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1*****@", text)
