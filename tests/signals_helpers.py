"""Child processes that a test stops with Ctrl-C (SIGINT) get SIGINT's default action back.

A shell without job control starts background commands with SIGINT ignored, and a child
inherits that: run from such a script (``.ci/run … &``), ``sxtdask`` would never see the test's
Ctrl-C. Pass :func:`sigint_default` as ``preexec_fn`` to ``subprocess.Popen``.
"""

from __future__ import annotations

import signal


def sigint_default() -> None:
    """In the child, before exec: SIGINT raises KeyboardInterrupt in Python again."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
