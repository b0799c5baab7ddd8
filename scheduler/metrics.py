"""Scheduler metrics (names per DESIGN.md: quanta_ prefix, base units, low cardinality)."""

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("quanta_scheduler_queue_depth", "Pending VMs waiting for placement.", ["shard"])
UNSCHEDULABLE = Gauge("quanta_scheduler_unschedulable_vms", "Pending VMs that fit no host now.", ["shard"])
PLACEMENT_SECONDS = Histogram(
    "quanta_scheduler_placement_duration_seconds",
    "Time from taking a batch off the queue to its bind commit, per VM batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BINDS = Counter("quanta_scheduler_binds_total", "VMs bound to hosts.")
BIND_CONFLICTS = Counter("quanta_scheduler_bind_conflicts_total",
                         "Host bind groups that lost a compare-and-swap race and were retried.")
SHARDS_OWNED = Gauge("quanta_scheduler_shards_owned", "Shards this process owns.")
HOSTS = Gauge("quanta_scheduler_hosts", "Hosts in this process's view by state: ready (heartbeat lease "
              "alive) or missing (heartbeat lost while VMs are still bound to it).", ["state"])
SHARD_CHANGES = Counter("quanta_scheduler_shard_ownership_changes_total",
                        "Shards acquired or lost by this process.", ["event"])
HOSTS_DECLARED_DEAD = Counter("quanta_scheduler_hosts_declared_dead_total",
                              "Hosts this process declared dead (missing past the grace); their VMs are moved off.")
SET_BINDS = Counter("quanta_scheduler_set_binds_total",
                    "All-or-nothing VM sets bound whole, every member in one transaction.")
SET_FAILURES = Counter("quanta_scheduler_set_failures_total",
                       "All-or-nothing VM sets failed (their pending members removed), by reason.", ["reason"])
SETS_WAITING = Gauge("quanta_scheduler_sets_waiting",
                     "All-or-nothing VM sets pending because not all their members fit now.", ["shard"])
