"""Failure counters have their series from the start, at 0, for every known label value
(a healthy system's dashboard shows 0, not "No data"; tests/system/test_deploy.py checks
the dashboard against a live Prometheus)."""

from __future__ import annotations

import inspect
import re

import grpc
from prometheus_client import REGISTRY

from agents import metrics as agent_metrics
from agents.drivers import protocol
from controlplane.api.interceptors import initialise_request_metrics
from controlplane.etcd import client


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_every_etcd_op_the_client_labels_is_initialised():
    source = inspect.getsource(client)
    labelled = set(re.findall(r'_call\(\s*"(\w+)"', source)) | set(re.findall(r'ETCD_ERRORS\.labels\("(\w+)"', source))
    assert labelled and labelled <= set(client.ETCD_OPS), labelled - set(client.ETCD_OPS)
    for op in client.ETCD_OPS:
        for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"):
            assert sample("quanta_etcd_request_errors_total", op=op, code=code) is not None, (op, code)
    assert sample("quanta_etcd_request_errors_total", op="txn", code="OK") is None


def test_request_series_are_created_per_method_and_code_under_the_short_name():
    initialise_request_metrics(["/test.v1.ProbeService/Probe", "Other"])
    for method in ("Probe", "Other"):
        for code in grpc.StatusCode:
            assert sample("quanta_api_requests_total", method=method, code=code.name) == 0.0, (method, code)


def test_permanent_driver_failure_reasons_are_initialised():
    permanent = {cls.reason for cls in vars(protocol).values()
                 if isinstance(cls, type) and issubclass(cls, protocol.DriverError) and not cls.transient}
    assert set(agent_metrics.FAILURE_REASONS) == permanent
    for reason in permanent:
        assert sample("quanta_vm_creations_failed_total", reason=reason) is not None, reason
