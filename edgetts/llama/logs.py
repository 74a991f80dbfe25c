"""llama.cpp's log, routed through Python logging (``edgetts.llama``) instead of stderr."""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

log = logging.getLogger("edgetts.llama")


@llama_cpp.llama_log_callback
def _llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints every load detail to stderr by default. Keep its errors (ggml level 4);
    # warnings (3) go to INFO and the rest to DEBUG, for whoever turns logging up.
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.log({4: logging.ERROR, 3: logging.INFO}.get(level, logging.DEBUG), message)


def route_llama_logs() -> None:
    """Send llama.cpp's log through Python logging (``edgetts.llama``) instead of stderr.

    Process-wide, so it happens when edgetts loads a model, not when it is imported: an app that
    imports edgetts beside its own llama.cpp use keeps its log setup until then.
    """
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))
