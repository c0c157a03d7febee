"""CRC-32 (zip's and zlib's polynomial) for the integrity checks that read every byte of a model.

zlib's runs at about 3 GB/s here, which makes it a large part of opening, writing and checking
a 2 GB `.keras` file. When the optional `isal` package (Intel ISA-L; `pip install wtool[fast]`)
is installed its CRC-32, about 5x faster and the same function, is used instead.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
    BACKEND = "isal"
except ImportError:  # the default: the standard library's
    from zlib import crc32
    BACKEND = "zlib"

__all__ = ["BACKEND", "crc32"]
