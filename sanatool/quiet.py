"""Other libraries' chatter, kept off a user's screen: sanatool's own lines are all a user sees.

Importing diffusers imports bitsandbytes (its quantizers), whose CPU backend asks the kernels hub
for an optional 4-bit kernel at import time and logs a warning whatever the answer ("Skipping
publisher trust check … offline mode", "Failed to load CPU gemm_4bit_forward …"). sanatool uses
no 4-bit kernel, so ``import sanatool`` raises these loggers to ERROR unless the user has set their
level (``sanatool --debug`` lowers them again).
Loading weights with diffusers or transformers draws their progress bars; :func:`quiet_loading`
turns those off while sanatool loads a model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

#: Loggers whose warnings concern optional kernels that sanatool never uses.
FOREIGN_LOGGERS = ("kernels", "bitsandbytes")


def quiet_foreign_logs() -> None:
    """Raise :data:`FOREIGN_LOGGERS` to ERROR, leaving any level a user has set as it is.

    Cheap and import-free: ``import sanatool`` calls it, before anything imports diffusers.
    """
    for name in FOREIGN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers' and transformers' loading progress bars: the library draws none of its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = []
    for module in (diffusers_logging, transformers_logging):
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()
