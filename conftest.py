# The harness's pytest plugin loads for this repository's tests and scenarios only.
# It is deliberately not a pytest11 entry point: installing sendspin-harness must
# not put its options and its autouse leak guard into other projects' test runs.
pytest_plugins = ["harness.pytest_plugin"]
