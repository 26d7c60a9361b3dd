"""The client gate: every case of harness/gate/client_cases.py against --client-cmd."""

from harness.gate.client_suite import test_client  # noqa: F401  (collected here)
