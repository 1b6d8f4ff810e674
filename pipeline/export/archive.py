"""`--zip`: the delivery as one archive, `DIR.zip` beside DIR, members under `<DIR name>/`.

Deterministic: members in sorted name order, a fixed timestamp and mode, so the same delivery
always gives the same bytes (and a checksum a receiving archive can compare). The archive is
written to a temp file and renamed over the old one like every other output; it is streamed
from the files in DIR rather than built in memory, since a collection's ALTO runs to gigabytes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pipeline.names import escape_component
from pipeline.outputs.page_files import TEMP_PREFIX, fsync_dir

_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold


def archive_path(to: Path) -> Path:
    return to.with_name(to.name + ".zip")


def _member_name(name: str) -> str:
    """DIR's name as the members' folder: zip names are UTF-8, so bytes that are not are `%XX`
    (as in every output path); a name that is valid UTF-8 stays as it is."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return escape_component(name)
    return name


def write_archive(to: Path, names: Iterable[str], target: Path) -> None:
    """Zip DIR/name for every name into `target`, atomically."""
    tmp = target.with_name(f"{TEMP_PREFIX}{secrets.token_hex(6)}-{target.name}")
    prefix = _member_name(to.name)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(names):
                src = to / name
                info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                info.file_size = src.stat().st_size  # lets zipfile choose ZIP64 up front
                with src.open("rb") as fin, zf.open(info, "w") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
