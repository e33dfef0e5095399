"""nft scripts applied in-process through libnftables, the library behind the `nft` command.

A script runs as one transaction in the network namespace of the calling thread (so run it in a
thread that joined the target namespace: ingress/dns/netns.py `run_in_netns`). Compared with
spawning `nsenter ... nft -f -`, this forks nothing: a fork of the daemon plus two execs cost
18-90 ms per sandbox on a loaded 2-CPU host; a context and a transaction here cost well under
a millisecond.
"""

from __future__ import annotations

import ctypes
import functools

LIBRARY = "libnftables.so.1"
OUTPUT_JSON = 1 << 4          # NFT_CTX_OUTPUT_JSON: what `nft -j` prints


class NftError(Exception):
    """nft refused the script; the message is its own."""


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIBRARY, use_errno=True)
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_free.restype = None
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def run_script(script: str, *, json: bool = False) -> str:
    """Run `script` (nft syntax) as one transaction in this thread's network namespace; returns
    what nft printed (e.g. for `list` commands; as `nft -j` does with `json`). Raises NftError
    with nft's message."""
    lib = _lib()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("libnftables: cannot create a context")
    try:
        if json:
            lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
            message = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            raise NftError(message or "nft refused the script")
        return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)
