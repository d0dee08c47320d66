"""When the environment turns tracing on, and what the gateway adds to the SDK's own reading of it (pure)."""

import pytest

from aigateway.tracing import (
    DEFAULT_SERVICE_NAME,
    _where,
    tracing_endpoint,
    tracing_requested,
    tracing_resource_attributes,
    tracing_unsupported,
)

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_SERVICE_NAME": "gw", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": " TRUE "}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(environ, on):
    assert tracing_requested(environ) is on


def test_the_traces_endpoint_wins_over_the_general_one():
    environ = {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces"}
    assert tracing_endpoint(environ) == "http://traces:4318/v1/traces"
    assert tracing_endpoint(ENDPOINT) == "http://collector:4318"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (ENDPOINT, None),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, None),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        # The traces-only variable decides when both are set.
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            None,
        ),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER='console'"),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp,console"}, None),
    ],
)
def test_only_otlp_over_http_protobuf_is_exported(environ, problem):
    found = tracing_unsupported(environ)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("environ", "added"),
    [
        ({}, {"service.name": DEFAULT_SERVICE_NAME}),
        ({"OTEL_SERVICE_NAME": "edge-gateway"}, {}),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, service.name=gw-eu"}, {}),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, {"service.name": DEFAULT_SERVICE_NAME}),
    ],
)
def test_the_service_is_named_ai_gateway_unless_the_environment_names_it(environ, added):
    assert tracing_resource_attributes(environ) == added


def test_the_logged_endpoint_carries_no_credentials():
    assert _where("https://user:secret@collector.example.com:4318/v1/traces?token=x") == (
        "https://collector.example.com:4318"
    )
