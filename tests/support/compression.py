"""Compressed bodies for tests of the upstream client's decoding: a gzip bomb (a small body that inflates
to a huge one), made once per test process."""

import zlib
from functools import lru_cache


@lru_cache(maxsize=2)
def gzip_bomb(decoded_size: int = 1 << 30) -> bytes:
    """gzip of `decoded_size` zero bytes: about 1 MB for the default 1 GiB (a ratio of ~1000)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [compressor.compress(block) for _ in range(decoded_size // len(block))]
    parts.append(compressor.compress(bytes(decoded_size % len(block))))
    parts.append(compressor.flush())
    return b"".join(parts)
