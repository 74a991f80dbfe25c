"""Where edgetts finds its files: assets shipped in the package, and the user's home.

* **Shipped** (``edgetts/assets`` inside the package, found through ``importlib.resources``): the
  policy registry manifests, the PRMs and the compute-optimal table. They travel in the wheel, so
  an installed package, an editable checkout and an app that bundles edgetts all find them.
* **Home** (``$EDGETTS_HOME``, default the user cache folder, ``~/.cache/edgetts`` on Linux): what
  is made or fetched on this machine (assembled models, calibration, metadata) and the user's
  overrides, which win over what ships:

  - ``policies/*.json``: registry manifests that add models or replace a shipped one by name;
  - ``prms/<name>/``: PRM folders, preferred to the shipped ones for the policy they name;
  - ``compute_optimal.json``: the table strategy ``auto`` reads instead of the shipped one.
"""

from __future__ import annotations

import importlib.resources
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

HOME_ENV = "EDGETTS_HOME"


def home() -> Path:
    """The user's edgetts folder: ``$EDGETTS_HOME``, else the platform's user cache folder. A
    ``~`` in it is the user's home (a quoted ``EDGETTS_HOME='~/x'`` reaches us unexpanded)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("edgetts", appauthor=False))


def shipped_dir() -> Path:
    """The assets folder inside the installed package (a real folder: onnxruntime opens files)."""
    assets = importlib.resources.files("edgetts") / "assets"
    path = Path(str(assets))
    if not path.is_dir():
        raise FileNotFoundError(
            f"edgetts's shipped assets are not a folder on disk ({assets}); install the package "
            "unzipped (pip install edgetts) or point $EDGETTS_HOME at a copy of edgetts/assets"
        )
    return path


def asset_roots() -> list[Path]:
    """Folders that may hold assets, the user's first: a user file overrides a shipped one."""
    return [home(), shipped_dir()]


def find_asset(relative: str) -> Path:
    """The first existing ``relative`` path under :func:`asset_roots` (the shipped one last)."""
    for root in asset_roots():
        if (root / relative).exists():
            return root / relative
    return shipped_dir() / relative


# The process's umask, read once at import (reading it means setting it, which is not
# thread-safe later).
UMASK = os.umask(0o022)
os.umask(UMASK)


@contextmanager
def replaced_atomically(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file of its own in ``path``'s folder to write, renamed over ``path`` when the
    block ends and removed when it raises: a reader never sees half a file, and two writers at
    once (two calibrations, two processes caching the same metadata) never share a temporary
    file. Its name is ``.<path's name>.`` and 8 characters, then ``suffix``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # as open() would make it (mkstemp's is the owner's alone)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (see :func:`replaced_atomically`)."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
