"""Property-based calls of every API operation from the OpenAPI schema (schemathesis): no server error, over a
bounded number of generated requests per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from avn_node.web.app import create_app
from tests.web.conftest import TOKEN, NodeData, dashboard_settings

EXAMPLES = 25


@pytest.mark.timeout(600)
def test_every_api_operation_answers_without_a_server_error(node_data: NodeData):
    app = create_app(dashboard_settings(node_data, "0.0.0.0"), node_data.receiver.sessions, node_data.receiver.files)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case) -> None:  # noqa: ANN001
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])

        call()
    app.state.unsubscribe()
