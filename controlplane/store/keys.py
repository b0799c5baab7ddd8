"""The etcd key layout. Every key lives under ``{root}/v1/``; ``root`` lets many
independent systems (or tests) share one etcd.

::

    vms/{tenant}/{project}/{vm}/spec      VmSpec      frontends
    vms/{tenant}/{project}/{vm}/status    VmStatus    scheduler (bind), then the host's agent
    queue/{shard}/{tenant}/{project}/{vm} VmSpec      frontends create, scheduler deletes at bind
    bindings/{host}/{tenant}/{project}/{vm} Binding   scheduler creates, agent or host lifecycle deletes
                                                      (bindings.py); a drain marks it evicting
    A VM's spec is copied into its queue entry or its binding (their readers place and
    reconcile from them); after create, only VmStore.update_spec changes the spec, and it
    rewrites the copy in the same txn.
    bootstrap/{tenant}/{project}/{vm}     BootstrapData  frontends, in the VM's create txn (write-once); read only
                                                  by the agent of the VM's host; deleted with the VM (in the txn
                                                  that removes it) or by that agent once the guest bootstrapped
    vmsets/{tenant}/{project}/{set}       VmSetRecord  frontends admit it (PENDING) in one txn with all its
                                                  members (each VmSpec.vm_set names it; all in the set's
                                                  shard) and their quota; the scheduler shard owning it
                                                  writes PLACED in the one txn that binds every member,
                                                  or FAILED at its deadline (members removed, quota released)
    holds/{plan}                          HoldRecord  a frontend (PlanVms with a hold), under a lease ending with
                                                  the hold, in one txn with each planned host's allocation
                                                  (HostAllocation.holds[plan]); the bind of the plan's set
                                                  (CreateVms with the plan) deletes it and the room it held
    networks/{tenant}/{project or -}/{net} NetworkRecord  frontends (NetworkService); "-": a tenant's shared network
    ports/{network uid}/{t}/{p}/{vm}/{i}  PortRecord  NIC i of a VM on the network: put in the txn that creates the
                                                  VM, deleted in every txn that removes it; DeleteNetwork
                                                  compares that none is under the network's uid
    addresses/{backing}/{ip}              AddressRecord  an address handed out (STATIC_POOL, STATIC) on the backing
                                                  (port group: one L2 segment, so one pool whichever network on
                                                  it asked): created with an absent compare in the VM's create txn
                                                  (never twice), deleted in every txn that removes the VM. {ip} is
                                                  fixed-width hex (IPv4: 8 digits, ``keys.ip_key``) so keys
                                                  sort numerically and a pool's range is one key range
                                                  A network's gateway is one too (``networks.GATEWAY``, put in the
                                                  network's create txn unless already there, never deleted)
    macs/{backing}/{mac}                  AddressRecord  a NIC's MAC on the backing (lower case, colons), taken and
                                                  released as its addresses are
    {backing} in both is escaped (``backing_segment``): any port group name is one key segment.
    disks/{tenant}/{project}/{disk}/record  DiskRecord  frontends (DiskService, delete marks it DELETING); removed
                                                  by an agent that reaches its class once it destroyed the data
    disks/{tenant}/{project}/{disk}/attachment  DiskAttachment  the disk is attached to this VM: created with an
                                                  absent compare in the txn that adds the disk to the VM's spec
                                                  (create, AttachDisk); marked detaching by DetachDisk; deleted by
                                                  the host's agent once it let go of the disk, or in the txn that
                                                  removes the VM. Beside the record (one prefix per disk), so that
                                                  one range or watch reads a disk and its attachment at one revision
    disk-work/detaching/{t}/{p}/{disk}    DiskAttachment  the agents' work index: a copy of an attachment marked
                                                  detaching, put in the txn that marks it (DetachDisk), deleted
                                                  in every txn that deletes that attachment (its host done, an
                                                  agent clearing it once its VM is gone)
    disk-work/deleting/{class}/{t}/{p}/{disk}  DiskRef  the agents' work index: a disk marked DELETING, put in the
                                                  txn that marks it, deleted in the txn that removes its record.
                                                  Agents list and watch only these (deleting: the classes their
                                                  hosts reach), never every tenant's disks/
    hosts/{host}/reg                      HostRegistration  agent, under its heartbeat lease
    hosts/{host}/alloc                    HostAllocation    changed with the host's bindings only
    hosts/{host}/maintenance              (empty)     an operator: no new placements while present
    hosts/{host}/drain                    (empty)     an operator (DrainHost, with maintenance in one txn): the
                                                      scheduler (shard 0's owner) moves the host's VMs off while
                                                      present with maintenance; SetMaintenance(false) lifts both
    hosts/{host}/dead                     (empty)     the scheduler (shard 0's owner): missing past the grace;
                                                      its VMs are moved off, no bind lands on it while present
    tombstones/{host}/{uid}               Tombstone   whoever takes a VM off a host (agent removal, host lifecycle
                                                      moves, an operator destroying an orphan), in that txn, under a
                                                      retention lease (3 days): the proof an agent destroys an
                                                      unknown VM by
    orphans/{host}/{uid}                  OrphanVm    the host's agent, under its heartbeat lease: a VM it found that
                                                      no binding wants and no tombstone condemns (quarantined);
                                                      deleted when an operator adopts or destroys it
    zones/{zone}/groups/{t}/{p}/{group}   ZoneGroup   zone-scoped VMs of the group in the zone: changed in the
                                                      txn of each such VM's bind and removal (scheduler, agent,
                                                      host lifecycle); absent when none
    flavors/{name}, images/{name}         Flavor, Image   public catalog (system admins)
    tenant-flavors/{tenant}/{name}        Flavor      a tenant's private flavors (its admins)
    tenants/{tenant}                      TenantRecord      system admins; quota ticket + allocated
    projects/{tenant}/{project}           ProjectRecord     tenant admins; the project's limits
    usage/{tenant}/{project}/{stripe}     Usage       frontends, in the txn of every VM create/delete;
                                                      a project's usage is the sum of its stripes
    tokens/{id}, revocations/{id}         TokenRecord, Revocation  under leases ending at expiry
    secrets/signing-key                   SigningKey  first process to need it (create-if-absent)
    audit/{tenant or -}/{time}-{id}       AuditRecord frontends, under a retention lease
    rate-demand/{frontend}                RateDemand  each frontend, under its lease: its callers' demand
    requests/{tenant}/{project}/{sha256(request_id)}  RequestRecord  frontends, under a lease
                                                      that expires after the retention (24 h)
    shards/{shard}                        ShardOwner  scheduler, under its session lease
    shards/members/{lease id}             ShardOwner  each live scheduler process, under its session lease
    config/cluster                        ClusterConfig  first process to start (create-if-absent)

Spec and status of a VM are adjacent keys, so one range reads a VM whole and a
single prefix watch sees every change of a project's VMs.
"""

from __future__ import annotations

import hashlib
import ipaddress
from urllib.parse import quote

from controlplane.etcd.ops import prefix_end
from controlplane.models import VmRef


class Keys:
    def __init__(self, root: str = "/quanta"):
        self.root = root.rstrip("/")
        self.base = f"{self.root}/v1/"

    def _k(self, path: str) -> bytes:
        return (self.base + path).encode()

    # VMs
    def vms_prefix(self, tenant: str | None = None, project: str | None = None) -> bytes:
        if tenant is None:
            return self._k("vms/")
        if project is None:
            return self._k(f"vms/{tenant}/")
        return self._k(f"vms/{tenant}/{project}/")

    def vm_prefix(self, ref: VmRef) -> bytes:
        return self._k(f"vms/{ref.tenant}/{ref.project}/{ref.vm_id}/")

    def vm_spec(self, ref: VmRef) -> bytes:
        return self.vm_prefix(ref) + b"spec"

    def vm_status(self, ref: VmRef) -> bytes:
        return self.vm_prefix(ref) + b"status"

    def parse_vm_key(self, key: bytes) -> tuple[VmRef, str]:
        """(ref, "spec" | "status") of a key under vms/."""
        tenant, project, vm_id, part = key[len(self.base) + 4:].decode().split("/")
        return VmRef(tenant, project, vm_id), part

    @staticmethod
    def ref_at_end(key: bytes) -> VmRef:
        """The VM a queue or binding key ends with (``.../{tenant}/{project}/{vm}``)."""
        tenant, project, vm_id = key.decode().rsplit("/", 3)[1:]
        return VmRef(tenant, project, vm_id)

    # Bootstrap data (controlplane/store/bootstrap.py): apart from vms/, so that no VM
    # read, list or watch ever carries it.
    def bootstrap(self, ref: VmRef) -> bytes:
        return self._k(f"bootstrap/{ref.tenant}/{ref.project}/{ref.vm_id}")

    # All-or-nothing sets (CreateVms)
    def vm_sets_prefix(self, tenant: str | None = None, project: str | None = None) -> bytes:
        if tenant is None:
            return self._k("vmsets/")
        return self._k(f"vmsets/{tenant}/" if project is None else f"vmsets/{tenant}/{project}/")

    def vm_set(self, tenant: str, project: str, set_id: str) -> bytes:
        return self._k(f"vmsets/{tenant}/{project}/{set_id}")

    # Plans' holds (controlplane/store/holds.py)
    def holds_prefix(self) -> bytes:
        return self._k("holds/")

    def hold(self, plan: str) -> bytes:
        return self._k(f"holds/{plan}")

    def holds_and_hosts(self) -> tuple[bytes, bytes]:
        """[holds/, end of hosts/): the plans' holds and the hosts as ONE key range, so
        one read or watch sees a plan's hold and the allocations that hold room for it
        (written in one txn) at one revision. holds/ and hosts/ are adjacent in key
        order: no other prefix of this layout sorts between them (``test_keys``);
        readers of the range still skip any key under neither."""
        return self.holds_prefix(), prefix_end(self.hosts_prefix())

    # Networks (controlplane/store/networks.py). project "" is a tenant's shared network.
    def networks_prefix(self, tenant: str | None = None, project: str | None = None) -> bytes:
        if tenant is None:
            return self._k("networks/")
        if project is None:
            return self._k(f"networks/{tenant}/")
        return self._k(f"networks/{tenant}/{project or '-'}/")

    def network(self, tenant: str, project: str, network_id: str) -> bytes:
        return self._k(f"networks/{tenant}/{project or '-'}/{network_id}")

    def ports_prefix(self, network_uid: str) -> bytes:
        return self._k(f"ports/{network_uid}/")

    def port(self, network_uid: str, ref: VmRef, index: int) -> bytes:
        return self._k(f"ports/{network_uid}/{ref.tenant}/{ref.project}/{ref.vm_id}/{index}")

    def addresses_prefix(self, backing: str) -> bytes:
        return self._k(f"addresses/{backing_segment(backing)}/")

    def address(self, backing: str, ip: str) -> bytes:
        """The key of ``ip`` handed out on ``backing``. Raises ValueError (not an IPv4 address)."""
        return self.addresses_prefix(backing) + ip_key(ip).encode()

    def address_at(self, backing: str, value: int) -> bytes:
        """The key of the IPv4 address ``value`` (as an int) on ``backing``: the bounds of
        a pool's key range (``address_at(b, lo)``, ``address_at(b, hi + 1)``)."""
        return self.addresses_prefix(backing) + f"{value:08x}".encode()

    def parse_address_key(self, backing: str, key: bytes) -> int:
        """The IPv4 address (an int) a key under ``addresses_prefix(backing)`` names."""
        return int(key[len(self.addresses_prefix(backing)):], 16)

    def macs_prefix(self, backing: str) -> bytes:
        return self._k(f"macs/{backing_segment(backing)}/")

    def mac(self, backing: str, mac: str) -> bytes:
        return self.macs_prefix(backing) + mac.lower().encode()

    # Persistent disks (controlplane/store/disks.py)
    def disks_prefix(self, tenant: str | None = None, project: str | None = None) -> bytes:
        if tenant is None:
            return self._k("disks/")
        return self._k(f"disks/{tenant}/" if project is None else f"disks/{tenant}/{project}/")

    def disk_prefix(self, tenant: str, project: str, disk_id: str) -> bytes:
        return self._k(f"disks/{tenant}/{project}/{disk_id}/")

    def disk(self, tenant: str, project: str, disk_id: str) -> bytes:
        return self.disk_prefix(tenant, project, disk_id) + b"record"

    def disk_attachment(self, tenant: str, project: str, disk_id: str) -> bytes:
        return self.disk_prefix(tenant, project, disk_id) + b"attachment"

    def parse_disk_key(self, key: bytes) -> tuple[str, str, str, str]:
        """(tenant, project, disk id, "record" | "attachment") of a key under disks/."""
        tenant, project, disk_id, part = key[len(self.base) + 6:].decode().split("/")
        return tenant, project, disk_id, part

    # The agents' disk work index (controlplane/store/agentdisks.py)
    def disk_work_detaching_prefix(self) -> bytes:
        return self._k("disk-work/detaching/")

    def disk_work_detaching(self, tenant: str, project: str, disk_id: str) -> bytes:
        return self._k(f"disk-work/detaching/{tenant}/{project}/{disk_id}")

    def disk_work_deleting_prefix(self, datastore_class: str) -> bytes:
        return self._k(f"disk-work/deleting/{datastore_class}/")

    def disk_work_deleting(self, datastore_class: str, tenant: str, project: str, disk_id: str) -> bytes:
        return self._k(f"disk-work/deleting/{datastore_class}/{tenant}/{project}/{disk_id}")

    def parse_disk_work_key(self, key: bytes) -> tuple[str, str, str]:
        """(tenant, project, disk id) of a key under disk-work/ (either kind)."""
        tenant, project, disk_id = key.decode().rsplit("/", 3)[1:]
        return tenant, project, disk_id

    # Scheduler queue
    def queue_prefix(self, shard: int) -> bytes:
        return self._k(f"queue/{shard:04d}/")

    def queue(self, shard: int, ref: VmRef) -> bytes:
        return self._k(f"queue/{shard:04d}/{ref.tenant}/{ref.project}/{ref.vm_id}")

    # Bindings
    def bindings_prefix(self, host: str | None = None) -> bytes:
        return self._k(f"bindings/{host}/" if host is not None else "bindings/")

    def binding(self, host: str, ref: VmRef) -> bytes:
        return self._k(f"bindings/{host}/{ref.tenant}/{ref.project}/{ref.vm_id}")

    def bindings_range(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """The smallest key range that holds the bindings of all ``hosts`` (by key
        bytes: "a-b/" sorts before "a/", so host-name order would not do)."""
        prefixes = [self.bindings_prefix(host) for host in hosts]
        return min(prefixes), max(prefix_end(p) for p in prefixes)

    def host_of_binding(self, key: bytes) -> str:
        return key[len(self.base) + len("bindings/"):].split(b"/", 1)[0].decode()

    # Hosts
    def hosts_prefix(self) -> bytes:
        return self._k("hosts/")

    def host_reg(self, host: str) -> bytes:
        return self._k(f"hosts/{host}/reg")

    def host_alloc(self, host: str) -> bytes:
        return self._k(f"hosts/{host}/alloc")

    def host_maintenance(self, host: str) -> bytes:
        return self._k(f"hosts/{host}/maintenance")

    def host_dead(self, host: str) -> bytes:
        return self._k(f"hosts/{host}/dead")

    def host_drain(self, host: str) -> bytes:
        return self._k(f"hosts/{host}/drain")

    def parse_host_key(self, key: bytes) -> tuple[str, str]:
        """(host, "reg" | "alloc" | "maintenance" | "dead" | "drain") of a key under hosts/."""
        host, part = key[len(self.base) + len("hosts/"):].decode().rsplit("/", 1)
        return host, part

    # Tombstones and orphans (controlplane/store/tombstones.py, orphans.py)
    def tombstone(self, host: str, uid: str) -> bytes:
        return self._k(f"tombstones/{host}/{uid}")

    def orphans_prefix(self, host: str | None = None) -> bytes:
        return self._k(f"orphans/{host}/" if host is not None else "orphans/")

    def orphan(self, host: str, uid: str) -> bytes:
        return self._k(f"orphans/{host}/{uid}")

    def orphans_range(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """The smallest key range that holds the orphan records of all ``hosts``."""
        prefixes = [self.orphans_prefix(host) for host in hosts]
        return min(prefixes), max(prefix_end(p) for p in prefixes)

    def parse_orphan_key(self, key: bytes) -> tuple[str, str]:
        """(host, uid) of a key under orphans/."""
        host, uid = key[len(self.base) + len("orphans/"):].decode().rsplit("/", 1)
        return host, uid

    # Zones
    def zones_prefix(self) -> bytes:
        return self._k("zones/")

    def zone_group(self, zone: str, group: str) -> bytes:
        """The count key of ``group`` (``{tenant}/{project}/{name}``, VmSpec.zone_group) in ``zone``."""
        return self._k(f"zones/{zone}/groups/{group}")

    def parse_zone_group_key(self, key: bytes) -> tuple[str, str] | None:
        """(zone, group) of a key under zones/, or None for a key this version does not know."""
        zone, part, group = key[len(self.base) + len("zones/"):].decode().partition("/")
        kind, _, group = group.partition("/")
        if not part or kind != "groups" or not group:
            return None
        return zone, group

    # Catalog
    def flavors_prefix(self) -> bytes:
        return self._k("flavors/")

    def flavor(self, name: str) -> bytes:
        return self._k(f"flavors/{name}")

    def images_prefix(self) -> bytes:
        return self._k("images/")

    def image(self, name: str) -> bytes:
        return self._k(f"images/{name}")

    def tenant_flavors_prefix(self, tenant: str | None = None) -> bytes:
        return self._k("tenant-flavors/" if tenant is None else f"tenant-flavors/{tenant}/")

    def tenant_flavor(self, tenant: str, name: str) -> bytes:
        return self._k(f"tenant-flavors/{tenant}/{name}")

    # Tenancy
    def tenants_prefix(self) -> bytes:
        return self._k("tenants/")

    def tenant(self, tenant: str) -> bytes:
        return self._k(f"tenants/{tenant}")

    def projects_prefix(self, tenant: str | None = None) -> bytes:
        return self._k("projects/" if tenant is None else f"projects/{tenant}/")

    def project(self, tenant: str, project: str) -> bytes:
        return self._k(f"projects/{tenant}/{project}")

    def usage_prefix(self, tenant: str, project: str | None = None) -> bytes:
        return self._k(f"usage/{tenant}/" if project is None else f"usage/{tenant}/{project}/")

    def usage(self, tenant: str, project: str, stripe: int) -> bytes:
        return self._k(f"usage/{tenant}/{project}/{stripe:02d}")

    # Authentication and audit
    def signing_key(self) -> bytes:
        return self._k("secrets/signing-key")

    def tokens_prefix(self) -> bytes:
        return self._k("tokens/")

    def token(self, token_id: str) -> bytes:
        return self._k(f"tokens/{token_id}")

    def revocations_prefix(self) -> bytes:
        return self._k("revocations/")

    def revocation(self, token_id: str) -> bytes:
        return self._k(f"revocations/{token_id}")

    def audit_prefix(self, tenant: str | None = None) -> bytes:
        return self._k("audit/" if tenant is None else f"audit/{tenant or '-'}/")

    def audit(self, tenant: str, time_ns: int, record_id: str) -> bytes:
        return self._k(f"audit/{tenant or '-'}/{time_ns:020d}-{record_id}")

    def rate_demand_prefix(self) -> bytes:
        return self._k("rate-demand/")

    def rate_demand(self, frontend: str) -> bytes:
        return self._k(f"rate-demand/{frontend}")

    # Idempotency and shards
    def request(self, tenant: str, project: str, request_id: str) -> bytes:
        digest = hashlib.sha256(request_id.encode()).hexdigest()
        return self._k(f"requests/{tenant}/{project}/{digest}")

    def cluster_config(self) -> bytes:
        return self._k("config/cluster")

    def shard(self, shard: int) -> bytes:
        return self._k(f"shards/{shard:04d}")

    def shards_prefix(self) -> bytes:
        """Shard owners and scheduler members together: one range, one watch."""
        return self._k("shards/")

    def shard_member(self, member: str) -> bytes:
        return self._k(f"shards/members/{member}")


def shard_of(uid: str, shards: int) -> int:
    """The scheduler shard that owns a pending VM: a stable hash of its uid."""
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "big") % shards


def backing_segment(backing: str) -> str:
    """A backing (port group name: any printable text, '/' included) as one key
    segment: percent-encoded, so no two backings share a segment or a prefix."""
    return quote(backing, safe="")


def ip_key(ip: str) -> str:
    """An IPv4 address as its key segment: 8 hex digits, so keys sort as the addresses
    do. Raises ValueError for anything but an IPv4 address."""
    return f"{int(ipaddress.IPv4Address(ip)):08x}"
