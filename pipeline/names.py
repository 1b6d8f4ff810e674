"""Input file names made printable: the one escaping that output paths and ALTO `fileName` share.

Names from os.listdir may hold bytes that are not UTF-8 (surrogate-escaped by Python). Output
folders and the `fileName` recorded in ALTO both use `escape_component`, so a user can match an
ALTO file to its folder, and no byte of the original name is lost to U+FFFD.
"""

from __future__ import annotations

import hashlib
import os

_MAX_NAME_BYTES = 255  # NAME_MAX of common Linux file systems


def escape_component(name: str) -> str:
    """One path component made printable; injective over names os.listdir can return.

    Undecodable bytes (surrogateescape `\\udcXX`) become `%XX`; `%`, C0/C1 controls and
    U+2028/U+2029 become the `%XX` of their UTF-8 bytes; everything else is kept. The escaped
    set is fixed code points, not Unicode categories, so a newer Python never moves outputs.
    Undoing the escapes gives back the name's exact bytes, hence injective. A result longer
    than NAME_MAX is cut and suffixed with a hash of the full name, so it fits and stays unique.
    """
    out = []
    for ch in name:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:  # a byte that was not valid UTF-8
            out.append(f"%{cp - 0xDC00:02X}")
        elif 0xD800 <= cp <= 0xDFFF:
            raise ValueError(f"{name!r} holds a lone surrogate and cannot name a file")
        elif ch == "%" or cp < 0x20 or 0x7F <= cp <= 0x9F or cp in (0x2028, 0x2029):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    escaped = "".join(out)
    if len(escaped.encode("utf-8")) <= _MAX_NAME_BYTES:
        return escaped
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    keep = escaped.encode("utf-8")[: _MAX_NAME_BYTES - 40].decode("utf-8", "ignore")
    return f"{keep}~{digest}"


def escape_relpath(relpath: str) -> str:
    """`escape_component` on every `/`-separated component of an input's relative path."""
    return "/".join(escape_component(part) for part in relpath.split("/"))


def db_text(name: str | os.PathLike) -> str | bytes:
    """Names from os.listdir may hold undecodable bytes (surrogateescape); store those as BLOB."""
    name = os.fspath(name)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")


def py_text(value: str | bytes) -> str:
    """The inverse of `db_text`."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
