"""HostService: agents' hosts as the API shows them, live through WatchHosts."""

from __future__ import annotations

import signal
import threading
import uuid

import grpc
import pytest

from controlplane.api.errors import ApiError
from controlplane.gen.quanta.v1 import common_pb2, host_pb2, vm_pb2
from quanta.local import LocalSystem
from tests.conftest import Tally, describe_hosts, seen_in, wait_until

READY, MISSING = host_pb2.Host.READY, host_pb2.Host.MISSING


def test_hosts_go_missing_when_their_agent_dies_and_come_back(etcd_server):
    root = f"/hosts-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=2, latency="zero", frontends=1,
                     lease_ttl=2, metrics=False) as system, system.client() as client:
        client.create_vm("a", flavor="medium", image="ubuntu")
        wait_until(lambda: client.get_vm("a").state == client.get_vm("a").RUNNING, message="a RUNNING",
                   seen=seen_in(system, client))
        hosts = {h.name: h for h in client.list_hosts()}
        assert set(hosts) == {"hosts/sim-00000", "hosts/sim-00001"}
        assert all(h.state == READY and h.capacity.vcpus == 128 and h.driver == "sim" for h in hosts.values())
        assert sum(h.allocated.vcpus for h in hosts.values()) == 2

        events: list[host_pb2.HostEvent] = []
        stream = client._hosts.WatchHosts(host_pb2.WatchHostsRequest())
        reader = threading.Thread(target=lambda: _collect(stream, events), daemon=True)
        reader.start()
        try:
            def events_seen() -> str:
                return "events " + str(Tally(common_pb2.EventType.Name(e.type) + (
                    f" {e.host.name} {host_pb2.Host.State.Name(e.host.state)}" if e.host.name else "")
                    for e in list(events)))

            wait_until(lambda: any(e.type == common_pb2.BOOKMARK for e in events),
                       message="the initial state and a bookmark", seen=events_seen)
            assert sorted(e.host.name for e in events if e.type == common_pb2.ADDED) == sorted(hosts)

            system.processes["agent-0"].kill(signal.SIGKILL)  # heartbeat stops; lease expires in ~2 s
            wait_until(lambda: {e.host.name for e in events if e.host.state == MISSING} == set(hosts),
                       timeout=30, message="both hosts MISSING in the watch", seen=events_seen)
            missing = client.get_host("sim-00000")
            assert missing.state == MISSING and missing.vm_count + client.get_host("sim-00001").vm_count == 1

            system.processes["agent-0"].start()
            wait_until(lambda: all(client.get_host(h).state == READY for h in hosts), timeout=30,
                       message="hosts READY again", seen=lambda: describe_hosts(client.list_hosts()))
            assert client.get_vm("a").state == client.get_vm("a").RUNNING  # adopted, not remade
        finally:
            stream.cancel()
            reader.join(10)

        with pytest.raises(ApiError) as unknown:
            client.get_host("nope")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND


def _collect(stream, events) -> None:
    try:
        for event in stream:
            events.append(event)
    except grpc.RpcError:
        pass


def test_quiet_watches_get_bookmarks(etcd_server):
    root = f"/bookmarks-{uuid.uuid4().hex[:8]}"
    with LocalSystem(etcd_endpoint=etcd_server.endpoint, root=root, hosts=1, latency="zero", frontends=1,
                     metrics=False, bookmark_interval_s=0.3) as system, system.client() as client:
        listed = client._call(client._vms.ListVms, vm_pb2.ListVmsRequest(parent=client.parent))
        events = client.watch_vms(resource_version=listed.resource_version, timeout=30)
        bookmarks = [next(events), next(events)]  # nothing changes: only bookmarks arrive
        events.close()
        assert [e.type for e in bookmarks] == [common_pb2.BOOKMARK, common_pb2.BOOKMARK]
        assert all(e.resource_version >= listed.resource_version for e in bookmarks)
        hosts = client._hosts.WatchHosts(host_pb2.WatchHostsRequest(), timeout=30)
        kinds = [next(hosts).type for _ in range(3)]  # the host, the list's bookmark, an idle bookmark
        hosts.cancel()
        assert kinds == [common_pb2.ADDED, common_pb2.BOOKMARK, common_pb2.BOOKMARK]
