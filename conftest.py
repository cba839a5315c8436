# CI fails on a skip that tests/allowed_skips.txt does not list (AMESH_STRICT_SKIPS=1): tests/skip_policy.py.
# pytester: tests/delivery/test_skip_policy.py runs pytest on sample tests.
pytest_plugins = ["tests.skip_policy", "pytester"]
