"""Python SDK for Quanta's gRPC API (what the ``quanta`` CLI uses).

    from controlplane.sdk import Client
    with Client() as quanta:                      # endpoint: arg, $QUANTA_ENDPOINT or `quanta up`'s
        vm = quanta.create_vm("web-1", flavor="small", image="ubuntu")
        vm = quanta.wait_for_vm("web-1", "RUNNING")

Returns quanta.v1 protobuf messages; raises ``controlplane.api.errors.ApiError``
(with ``code``, ``reason``, ``field_violations``) for every failed call.
Creates carry a request_id (generated if not given) and are retried on
UNAVAILABLE with the same request_id, so a retry never makes a second VM.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import grpc

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import host_pb2, host_pb2_grpc, vm_pb2, vm_pb2_grpc

DEFAULT_ENDPOINT = "127.0.0.1:7000"


def local_state_path() -> pathlib.Path:
    """Where ``quanta up`` records its endpoint for the CLI and SDK."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "quanta" / "local.json"


def resolve_endpoint(endpoint: str | None = None) -> str:
    if endpoint:
        return endpoint
    if os.environ.get("QUANTA_ENDPOINT"):
        return os.environ["QUANTA_ENDPOINT"]
    try:
        return json.loads(local_state_path().read_text())["endpoint"]
    except (OSError, ValueError, KeyError):
        return DEFAULT_ENDPOINT


class Client:
    def __init__(self, endpoint: str | None = None, *, tenant: str = "default", project: str = "default",
                 timeout: float = 10.0):
        self.endpoint = resolve_endpoint(endpoint)
        self.tenant = tenant
        self.project = project
        self.timeout = timeout
        self._channel = grpc.insecure_channel(self.endpoint)
        self._vms = vm_pb2_grpc.VmServiceStub(self._channel)
        self._hosts = host_pb2_grpc.HostServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def parent(self) -> str:
        return f"tenants/{self.tenant}/projects/{self.project}"

    def vm_name(self, vm_id: str) -> str:
        return vm_id if vm_id.startswith("tenants/") else f"{self.parent}/vms/{vm_id}"

    def _call(self, method, request, *, retries: int = 0):
        """One API call within ``self.timeout`` in all, retrying UNAVAILABLE up to
        ``retries`` times (with backoff) while time is left. Raises ApiError."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(retries + 1):
            try:
                return method(request, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as err:
                backoff = min(0.1 * 2 ** attempt, 2.0)
                if (err.code() == grpc.StatusCode.UNAVAILABLE and attempt < retries
                        and time.monotonic() + backoff < deadline):
                    time.sleep(backoff)
                    continue
                raise ApiError.from_rpc_error(err) from None

    # VMs
    def create_vm(self, vm_id: str = "", *, flavor: str, image: str, labels: dict[str, str] | None = None,
                  request_id: str | None = None) -> vm_pb2.Vm:
        """Create a VM; returns it PENDING. ``vm_id`` "" lets the server assign one.
        Idempotent per request_id (one is generated, and reused by the retries here)."""
        request = vm_pb2.CreateVmRequest(
            parent=self.parent, vm_id=vm_id, request_id=request_id or uuid.uuid4().hex,
            vm=vm_pb2.Vm(flavor=flavor, image=image, labels=labels or {}),
        )
        return self._call(self._vms.CreateVm, request, retries=3)

    def get_vm(self, vm_id: str) -> vm_pb2.Vm:
        return self._call(self._vms.GetVm, vm_pb2.GetVmRequest(name=self.vm_name(vm_id)), retries=3)

    def list_vms(self, *, label_selector: str = "", page_size: int = 500) -> Iterator[vm_pb2.Vm]:
        """Every VM of the project, fetched page by page at one consistent revision."""
        token = ""
        while True:
            response = self._call(self._vms.ListVms, vm_pb2.ListVmsRequest(
                parent=self.parent, page_size=page_size, page_token=token, label_selector=label_selector),
                retries=3)
            yield from response.vms
            token = response.next_page_token
            if not token:
                return

    def delete_vm(self, vm_id: str, *, etag: str = "") -> vm_pb2.Vm:
        """Request deletion; returns the VM DELETING. Idempotent."""
        return self._call(self._vms.DeleteVm, vm_pb2.DeleteVmRequest(name=self.vm_name(vm_id), etag=etag),
                          retries=3)

    def watch_vms(self, *, resource_version: int = 0, label_selector: str = "",
                  timeout: float | None = None) -> Iterator[vm_pb2.VmEvent]:
        """Stream VM events (from 0: current state first). Ends after ``timeout`` seconds if given."""
        stream = self._vms.WatchVms(vm_pb2.WatchVmsRequest(
            parent=self.parent, resource_version=resource_version, label_selector=label_selector),
            timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
                return
            raise ApiError.from_rpc_error(err) from None
        finally:
            stream.cancel()

    def wait_for_vm(self, vm_id: str, state: str, *, timeout: float = 60.0) -> vm_pb2.Vm:
        """Block until the VM is in ``state`` (e.g. "RUNNING"), watching, not polling.
        Raises TimeoutError."""
        wanted = vm_pb2.Vm.State.Value(state)
        name = self.vm_name(vm_id)
        deadline = time.monotonic() + timeout
        for event in self.watch_vms(timeout=timeout):
            if event.vm.name == name and event.vm.state == wanted:
                return event.vm
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{name} not {state} within {timeout}s")

    # Hosts
    def list_hosts(self) -> Iterator[host_pb2.Host]:
        token = ""
        while True:
            response = self._call(self._hosts.ListHosts, host_pb2.ListHostsRequest(page_size=1000,
                                                                                   page_token=token), retries=3)
            yield from response.hosts
            token = response.next_page_token
            if not token:
                return

    def get_host(self, host_id: str) -> host_pb2.Host:
        name = host_id if host_id.startswith("hosts/") else f"hosts/{host_id}"
        return self._call(self._hosts.GetHost, host_pb2.GetHostRequest(name=name), retries=3)
