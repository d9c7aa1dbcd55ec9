"""The node-as-a-process fixtures of tests/node, for the reliability tests."""

from tests.node.conftest import _remove_decompressed_copies, archive, node  # noqa: F401 - fixtures
