"""`sendspin-gate`: the client gate from any directory, without a checkout of this repository.

    sendspin-gate --client-cmd 'my-player --server {url}' [--report-dir DIR] [--strict]
                  [--known-failures FILE] [--case 2.3] [pytest options: -x, --junitxml F, ...]

It is pytest on the installed suite (harness/gate/client_suite.py) with this package's
plugin; every option of `pytest scenarios/ --help`'s "sendspin-gate" group applies.
Exit status: pytest's (0: every case passed or is a known failure, 1: a case failed).
"""

from __future__ import annotations

import os
import sys

import pytest

from .gate_session import GATE_PROG


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    os.environ[GATE_PROG] = "sendspin-gate"  # replay commands start with it
    return int(pytest.main(["-p", "harness.pytest_plugin", "-p", "no:cacheprovider", "--pyargs",
                            "harness.gate.client_suite", *args]))


if __name__ == "__main__":
    sys.exit(main())
