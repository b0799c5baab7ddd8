"""Agent metrics (quanta_ prefix, base units, no per-VM or per-host labels)."""

from prometheus_client import Counter, Gauge, Histogram

from agents.drivers.protocol import (
    CapacityExceeded,
    DriverError,
    GuestUnavailable,
    ImageNotFound,
    OperationFailed,
    PowerCycleRequired,
    VmNotFound,
)

INFLIGHT = Gauge("quanta_agent_inflight_operations", "VM reconciles running now.")
DRIVER_SECONDS = Histogram(
    "quanta_agent_driver_call_duration_seconds", "Latency of driver calls.", ["op", "result"],
    buckets=(0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HOSTS = Gauge("quanta_agent_hosts", "Hosts this agent runs, by state.", ["state"])
VMS_RUNNING = Counter("quanta_vm_creations_running_total", "VM creations that reached RUNNING.")
VMS_FAILED = Counter("quanta_vm_creations_failed_total", "VM creations that ended in ERROR.", ["reason"])
#: The reasons of the Protocol's errors that end a creation (the permanent ones); their
#: series exist from the start, at 0, so a healthy agent shows no failures rather than no
#: data. A driver's own reasons appear with their first failure.
FAILURE_REASONS = tuple(sorted({cls.reason for cls in (DriverError, VmNotFound, CapacityExceeded, ImageNotFound,
                                                       OperationFailed, PowerCycleRequired, GuestUnavailable)
                                 if not cls.transient}))
for _reason in FAILURE_REASONS:
    VMS_FAILED.labels(_reason)
ACCEPTED_TO_RUNNING = Histogram(
    "quanta_vm_accepted_to_running_seconds", "Time from API acceptance to RUNNING.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
STATUS_WRITES = Counter("quanta_agent_status_writes_total", "VM status updates written to etcd.")
ORPHAN_VMS = Gauge(
    "quanta_agent_orphan_vms",
    "VMs quarantined on this agent's hosts: unknown to the store and without a tombstone "
    "(quanta host orphans; adopt or destroy them).")
