"""deploy/ against the code it deploys.

- Alert rules pass ``promtool check rules`` and their unit tests (``promtool test rules``);
  the scrape configs pass ``promtool check config``.
- The compose file and the Kubernetes manifests are parsed and checked at schema level;
  every Quanta command in them is parsed by the component's own argument parser
  (found the way ``quanta <component>`` finds it), and ports, images, job names and
  environment variables agree with the code and with each other.
- The Dockerfile builds the package and runs the ``quanta`` console script.
- Every metric the Grafana dashboard and the alert rules name is exported by a real
  process: a live /metrics scrape of a LocalSystem that has made VMs; and
  ``LocalSystem(prometheus=True)`` / ``quanta up --prometheus`` run a real Prometheus
  that has the dashboard's metrics.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import tokenize
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from unittest import mock

import pytest
import yaml

import quanta.cli
from quanta.local import LocalSystem
from quanta.prometheus import ALERT_RULES, DASHBOARD, PrometheusServer, job_of, scrape_config
from tests.conftest import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = f"quanta/quanta:{PYPROJECT['project']['version']}"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
QUANTA = os.path.join(os.path.dirname(sys.executable), "quanta")
COMPONENTS = ("frontend", "scheduler", "agent")
QUANTA_JOBS = {f"quanta-{c}" for c in COMPONENTS}


def promtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def load_yaml(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


# -- PromQL: the metric names an expression selects -----------------------------------

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Bare identifiers of ``expr`` that are not functions, aggregations, keywords or
    label names: the metric names it selects (enough for the PromQL we write)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group().lower() in _NOT_METRICS:
            continue
        names.add(match.group())
    return names


def test_metric_names_finds_selectors_not_functions_or_labels():
    expr = ('histogram_quantile(0.99, sum by (le, method) (rate(quanta_a_bucket{code!="OK"}[$__rate_interval])))'
            ' / ignoring(x) sum(quanta_b) > 0.5 and absent(up{job="quanta-frontend"} == 1) offset 5m')
    assert metric_names(expr) == {"quanta_a_bucket", "quanta_b", "up"}


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics page can carry, also for families without samples yet."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group())
    return names


# -- argument parsers of the real components ---------------------------------------------


class _Captured(Exception):
    def __init__(self, value):
        super().__init__()
        self.value = value


def component_parser(component: str, env: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser ``quanta <component>`` uses, built under ``env`` (its defaults read
    QUANTA_* variables): the CLI runs the component's main until it parses its arguments."""
    def parse_args(self, *_args, **_kwargs):
        raise _Captured(self)

    with mock.patch.dict(os.environ, env or {}), mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args), \
            pytest.raises(_Captured) as parser_call:
        quanta.cli.main([component])
    return parser_call.value.value


def parse_command(argv: list[str], env: dict[str, str] | None = None) -> argparse.Namespace:
    """Parse ``quanta <component> ...`` as that component would; fails the test on a bad flag."""
    component, *rest = argv
    assert component in COMPONENTS, f"not a Quanta component: {argv}"
    parser = component_parser(component, env)
    stderr = io.StringIO()
    with mock.patch("sys.stderr", stderr):
        try:
            return parser.parse_args(rest)
        except SystemExit:
            pytest.fail(f"quanta {' '.join(argv)}: {stderr.getvalue()}")


def test_component_parsers_are_the_real_ones():
    parser = component_parser("frontend", {"QUANTA_LISTEN": "0.0.0.0:7001"})
    assert parser.prog == "quanta frontend"
    assert parser.parse_args([]).listen == "0.0.0.0:7001"
    assert component_parser("agent").prog == "quanta agent"
    with pytest.raises(pytest.fail.Exception, match="--no-such-flag"):
        parse_command(["scheduler", "--no-such-flag"])


def env_vars_read_by_code() -> set[str]:
    names = set()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        for path in ROOT.glob(f"{package.rstrip('*')}/**/*.py"):
            if "gen" in path.relative_to(ROOT).parts:
                continue
            with open(path, "rb") as source:
                for token in tokenize.tokenize(source.readline):
                    if token.type == tokenize.STRING and re.fullmatch(r"[\"']QUANTA_\w+[\"']", token.string):
                        names.add(token.string[1:-1])
    return names


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def etcd_hosts(endpoints: str) -> set[str]:
    hosts = set()
    for endpoint in endpoints.split(","):
        match = re.fullmatch(r"http://([^:/]+):2379", endpoint.strip())
        assert match, f"etcd endpoint {endpoint!r} is not http://HOST:2379"
        hosts.add(match.group(1))
    return hosts


def check_quanta_process(argv: list[str], env: dict[str, str], *, metrics_port: int,
                         grpc_port: int | None = None) -> argparse.Namespace:
    """The checks every deployed Quanta process passes, wherever it is deployed."""
    unknown = {name for name in env if name.startswith("QUANTA_")} - env_vars_read_by_code()
    assert not unknown, f"environment variables no code reads: {unknown}"
    args = parse_command(argv, env)
    assert args.metrics_port == metrics_port, argv
    assert args.metrics_host == "0.0.0.0", f"metrics would only listen on loopback: {argv}"
    if argv[0] == "frontend":
        assert args.listen == f"0.0.0.0:{grpc_port}", argv
    return args


# -- Prometheus rules and scrape configs ------------------------------------------------------


def test_alert_rules_pass_promtool_check_and_unit_tests():
    assert "SUCCESS" in promtool("check", "rules", str(ALERT_RULES)).stdout
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "tests" / "alerts_test.yml"))
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_rules_cover_the_issue():
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert {"QuantaFrontendDown", "QuantaApiErrorRatioHigh", "QuantaCreationLatencyBudgetBurnFast",
            "QuantaCreationLatencyBudgetBurnSlow", "QuantaSchedulerBacklogGrowing", "QuantaHostsMissing",
            "QuantaEtcdErrors"} <= alerts
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text()))
    assert alerts - {"QuantaAgentDown", "QuantaVmsUnschedulable"} <= tested, "alerts without a unit test"
    for rule in alert_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"page", "ticket", "warning"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def jobs_in(exprs: list[str]) -> set[str]:
    return {job for expr in exprs for job in re.findall(r'job="([^"]+)"', expr)}


def test_compose_scrape_config_passes_promtool_and_names_the_alerts_jobs(tmp_path):
    # Laid out as compose mounts it: the config beside the packaged alert rules.
    shutil.copy(PROMETHEUS_DIR / "compose.yml", tmp_path / "compose.yml")
    shutil.copy(ALERT_RULES, tmp_path / "alerts.yml")
    promtool("check", "config", str(tmp_path / "compose.yml"))
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_DIR / "compose.yml")["scrape_configs"]}
    assert jobs == QUANTA_JOBS | {"etcd"}
    assert jobs_in([rule["expr"] for rule in alert_rules()] + dashboard_exprs()) <= jobs


def test_kubernetes_scrape_config_is_valid_and_keyed_by_the_manifests_annotations(tmp_path):
    config = load_yaml(PROMETHEUS_DIR / "kubernetes.yml")
    # Debian's Prometheus is built without Kubernetes discovery: check everything else
    # with promtool by standing a static target list in for it.
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERT_RULES, tmp_path / "alerts.yml")
    promtool("check", "config", str(tmp_path / "prometheus.yml"))

    relabels = config["scrape_configs"][0]["relabel_configs"]
    sources = {label for rule in relabels for label in rule.get("source_labels", [])}
    annotations = {f"__meta_kubernetes_pod_annotation_{re.sub(r'[^A-Za-z0-9_]', '_', key)}"
                   for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/job")}
    assert annotations <= sources
    assert any(rule.get("target_label") == "job" for rule in relabels)
    address = next(rule for rule in relabels if rule.get("target_label") == "__address__")
    joined = re.sub(address["regex"], address["replacement"].replace("$", "\\"), "10.1.2.3:7000;9100")
    assert joined == "10.1.2.3:9100"


def test_generated_scrape_config_for_quanta_up_uses_the_same_jobs(tmp_path):
    targets = {"frontend-0": "127.0.0.1:1", "frontend-1": "127.0.0.1:2", "scheduler-0": "127.0.0.1:3",
               "agent-0": "127.0.0.1:4", "etcd": "127.0.0.1:5"}
    config = scrape_config(targets, rule_files=(str(ALERT_RULES),))
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    promtool("check", "config", str(path))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == QUANTA_JOBS | {"etcd"}
    assert [s["targets"] for s in jobs["quanta-frontend"]["static_configs"]] == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    assert job_of("scheduler-12") == "quanta-scheduler"


# -- compose -----------------------------------------------------------------------------


def compose() -> dict:
    return load_yaml(DEPLOY / "compose" / "compose.yaml")


def quanta_services(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("image") == IMAGE}


def test_compose_runs_the_deployment_the_issue_asks_for():
    services = compose()["services"]
    quanta = quanta_services(services)
    by_component: dict[str, list[str]] = {}
    for name, service in quanta.items():
        by_component.setdefault(service["command"][0], []).append(name)
    assert len(by_component["frontend"]) == 2
    assert len(by_component["scheduler"]) == 2
    assert len(by_component["agent"]) == 1
    assert parse_command(services[by_component["agent"][0]]["command"]).driver == "sim"
    etcd = sorted(name for name, s in services.items() if s["image"].startswith("quay.io/coreos/etcd:"))
    assert len(etcd) == 3
    assert {"lb", "prometheus"} <= set(services)
    for name, service in services.items():
        assert set(service.get("depends_on", [])) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"
            else:
                assert (DEPLOY / "compose" / source).exists(), f"{name}: {source} missing"


def test_compose_etcd_members_form_one_cluster_the_components_use():
    services = compose()["services"]
    members = {name: s for name, s in services.items() if s["image"].startswith("quay.io/coreos/etcd:")}
    for name, service in members.items():
        command = service["command"]
        assert command[0] == "etcd"
        assert command[command.index("--name") + 1] == name
        assert command[command.index("--advertise-client-urls") + 1] == f"http://{name}:2379"
        cluster = dict(item.split("=", 1) for item in service["environment"]["ETCD_INITIAL_CLUSTER"].split(","))
        assert cluster == {member: f"http://{member}:2380" for member in members}
    for name, service in quanta_services(services).items():
        assert etcd_hosts(service["environment"]["QUANTA_ETCD"]) == set(members), name


def test_compose_quanta_commands_parse_and_ports_agree_with_the_lb_and_prometheus():
    services = compose()["services"]
    scrape = {job["job_name"]: {t for s in job["static_configs"] for t in s["targets"]}
              for job in load_yaml(PROMETHEUS_DIR / "compose.yml")["scrape_configs"]}
    backends = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", (DEPLOY / "compose" / "haproxy.cfg").read_text(), re.M)
    expected_scrape: dict[str, set[str]] = {}
    frontend_addresses = set()
    for name, service in quanta_services(services).items():
        env = {k: str(v) for k, v in service["environment"].items()}
        command = [str(arg) for arg in service["command"]]
        args = check_quanta_process(command, env, metrics_port=9100, grpc_port=7000)
        assert args.name == name
        assert str(args.metrics_port) in service["expose"]
        expected_scrape.setdefault(job_of(f"{command[0]}-0"), set()).add(f"{name}:{args.metrics_port}")
        if command[0] == "frontend":
            assert str(port_of(args.listen)) in service["expose"]
            frontend_addresses.add(f"{name}:{port_of(args.listen)}")
        assert service["build"]["context"] == "../.."
        assert (DEPLOY / "compose" / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert {address for _, address in backends} == frontend_addresses
    bind = re.search(r"^\s*bind\s+\S*:(\d+)", (DEPLOY / "compose" / "haproxy.cfg").read_text(), re.M).group(1)
    assert any(port.endswith(f":{bind}") for port in services["lb"]["ports"])
    assert services["lb"]["volumes"][0].startswith("./haproxy.cfg:")
    etcd = {f"{name}:2379" for name, s in services.items() if s["image"].startswith("quay.io/coreos/etcd:")}
    assert scrape == {**expected_scrape, "etcd": etcd}
    prometheus = services["prometheus"]
    config = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert config == "--config.file=/etc/prometheus/compose.yml"
    # The config and its rule files are mounted where it names them; the rules are the
    # package's own (one copy).
    mounts = {target: (DEPLOY / "compose" / source).resolve()
              for source, target, *_ in (volume.split(":") for volume in prometheus["volumes"])
              if source.startswith(".")}
    assert mounts["/etc/prometheus/compose.yml"] == PROMETHEUS_DIR / "compose.yml"
    rule_files = load_yaml(PROMETHEUS_DIR / "compose.yml")["rule_files"]
    assert rule_files == ["alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == ALERT_RULES


def test_compose_haproxy_config_passes_haproxy_check_as_shipped():
    """Valid before the frontends' names resolve (outside compose none do): such servers
    start disabled and are enabled through docker's DNS (``init-addr``, ``resolvers``)."""
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed in CI: scripts/deps installs Debian's haproxy package")
        pytest.skip("haproxy is not installed (Debian's haproxy package; scripts/deps installs it)")
    config = DEPLOY / "compose" / "haproxy.cfg"
    result = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"haproxy -c -f {config}:\n{result.stdout}\n{result.stderr}"
    assert "Configuration file is valid" in result.stdout + result.stderr


# -- Kubernetes --------------------------------------------------------------------------------

_API_VERSIONS = {"Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1",
                 "Deployment": "apps/v1", "StatefulSet": "apps/v1"}


def manifests() -> list[dict]:
    kustomization = load_yaml(DEPLOY / "kubernetes" / "kustomization.yaml")
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files, "kustomization.yaml must list every manifest"
    docs = []
    for name in kustomization["resources"]:
        docs += [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if doc]
    return docs


def test_kubernetes_objects_have_the_required_fields():
    docs = manifests()
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret"} <= kinds
    names = set()
    for doc in docs:
        assert doc["apiVersion"] == _API_VERSIONS[doc["kind"]], doc["kind"]
        meta = doc["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        assert (doc["kind"], meta["name"]) not in names
        names.add((doc["kind"], meta["name"]))
        if doc["kind"] != "Namespace":
            assert meta["namespace"] == "quanta"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            spec = doc["spec"]
            template = spec["template"]
            assert spec["replicas"] >= 1
            assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            containers = template["spec"]["containers"]
            for container in containers:
                assert container["name"] and container["image"]
                ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
                assert all(len(name) <= 15 for name in ports)
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe in container:
                        kind, = set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"}
                        port = container[probe][kind].get("port")
                        assert port in ports or port in ports.values(), f"{meta['name']} {probe}: port {port}"
            volumes = {v["name"] for v in template["spec"].get("volumes", [])}
            claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
            for container in containers:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes | claims
            for volume in template["spec"].get("volumes", []):
                if "secret" in volume:
                    assert ("Secret", volume["secret"]["secretName"]) in {(d["kind"], d["metadata"]["name"])
                                                                          for d in docs}


def test_kubernetes_services_select_a_workload_and_its_ports():
    docs = manifests()
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [w for w in workloads
                    if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
        container_ports = {p["name"]: p["containerPort"]
                           for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports or port["targetPort"] in container_ports.values()
    etcd = next(w for w in workloads if w["metadata"]["name"] == "etcd")
    headless = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == etcd["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_kubernetes_quanta_containers_parse_and_agree_with_config_probes_and_scraping():
    docs = manifests()
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "quanta-config")["data"]
    etcd = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "etcd")
    members = {f"etcd-{i}.{etcd['spec']['serviceName']}.quanta.svc" for i in range(etcd["spec"]["replicas"])}
    etcd_env = {e["name"]: e["value"] for e in etcd["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    assert {peer.split("=")[1] for peer in etcd_env["ETCD_INITIAL_CLUSTER"].split(",")} == \
        {f"http://{member}:2380" for member in members}
    assert etcd_hosts(config["QUANTA_ETCD"]) == members

    components = {}
    for workload in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        pod = workload["spec"]["template"]
        for container in pod["spec"]["containers"]:
            if container["image"] != IMAGE:
                continue
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            env = {}
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == "quanta-config"
                env.update(config)
            args = check_quanta_process(container["args"], env, metrics_port=ports["metrics"],
                                        grpc_port=ports.get("grpc"))
            assert etcd_hosts(args.etcd) == members
            component = container["args"][0]
            components[component] = workload
            annotations = pod["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) == ports["metrics"]
            assert annotations["prometheus.io/job"] == job_of(f"{component}-0")
            assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == component
            if component == "frontend":
                for probe in ("readinessProbe", "livenessProbe"):
                    assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert set(components) == set(COMPONENTS)
    assert components["frontend"]["spec"]["replicas"] >= 2
    assert components["scheduler"]["spec"]["replicas"] >= 2
    etcd_pod = etcd["spec"]["template"]["metadata"]["annotations"]
    assert etcd_pod["prometheus.io/job"] == "etcd" and etcd_pod["prometheus.io/port"] == "2379"


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_builds_the_package_and_runs_the_quanta_script():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
                    if re.match(r"^[A-Z]+\s", line)]
    entrypoint = [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoint == [["quanta"]]
    assert "quanta" in PYPROJECT["project"]["scripts"]
    copied = {arg.split()[0] for op, arg in instructions if op == "COPY" and not arg.startswith("--from")}
    copied |= {part for op, arg in instructions if op == "COPY" for part in arg.split()[:-1]}
    needed = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    assert all((ROOT / path).exists() for path in needed)
    minimum = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", PYPROJECT["project"]["requires-python"])
                    .group(1).split("."))
    for op, arg in instructions:
        if op == "FROM":
            version = re.match(r"python:(\d+)\.(\d+)", arg)
            assert version and tuple(map(int, version.groups())) >= minimum, arg
    exposed = {int(port) for op, arg in instructions if op == "EXPOSE" for port in arg.split()}
    assert exposed == {port_of(parse_command(["frontend", "--listen", "0.0.0.0:7000"]).listen), 9100}
    user = next(arg for op, arg in reversed(instructions) if op == "USER")
    assert user.isdigit() and int(user) != 0, "runAsNonRoot needs a numeric non-root USER"


# -- live: the metrics real processes export, and a real Prometheus -----------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def live():
    """A local system with Prometheus that has made VMs, and its processes' /metrics."""
    system = LocalSystem(hosts=3, latency="zero", prometheus=True)
    try:
        system.start(timeout=90)
        with system.client() as client:
            for i in range(4):
                client.create_vm(f"deploy-{i}", flavor="small", image="ubuntu")
            for i in range(4):
                client.wait_for_vm(f"deploy-{i}", "RUNNING", timeout=60)
        scraped = {name: _scrape(port) for name, port in system.metrics_ports.items()}
        yield system, scraped
    finally:
        system.cleanup()


_RECORDED = {rule["record"] for rule in alert_rules() if "record" in rule}


def test_dashboard_and_alerts_name_only_metrics_the_processes_export(live):
    _system, scraped = live
    assert {job_of(name) for name in scraped} == QUANTA_JOBS
    exported = set().union(*(exported_names(text) for text in scraped.values()))
    dashboard = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    alerting = set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))
    assert len(dashboard) >= 15 and len(alerting) >= 8  # the check must have something to check
    assert dashboard - exported - {"up"} == set()
    assert alerting - exported - _RECORDED - {"up"} == set()
    # A bucket bound named in a query exists in the histogram the processes export.
    text = "\n".join(scraped.values())
    for expr in dashboard_exprs() + [rule["expr"] for rule in alert_rules()]:
        for metric, bound in re.findall(r'(\w+_bucket)\{[^}]*le="([^"]+)"', expr):
            assert re.search(rf'^{metric}\{{.*le="{re.escape(bound)}"', text, re.M), f"{metric} le={bound}"


def test_processes_export_the_metrics_the_design_requires(live):
    _system, scraped = live
    exported = {job: set() for job in QUANTA_JOBS}
    for name, text in scraped.items():
        exported[job_of(name)] |= exported_names(text)
    required = {
        "quanta-frontend": {"quanta_api_requests_total", "quanta_api_request_duration_seconds_bucket",
                            "quanta_vm_creations_accepted_total", "quanta_etcd_request_duration_seconds_bucket",
                            "quanta_etcd_request_errors_total", "quanta_build_info"},
        "quanta-scheduler": {"quanta_scheduler_queue_depth", "quanta_scheduler_placement_duration_seconds_bucket",
                             "quanta_scheduler_bind_conflicts_total", "quanta_scheduler_shards_owned",
                             "quanta_scheduler_hosts", "quanta_build_info"},
        "quanta-agent": {"quanta_agent_inflight_operations", "quanta_agent_driver_call_duration_seconds_bucket",
                         "quanta_agent_hosts", "quanta_vm_creations_running_total",
                         "quanta_vm_creations_failed_total", "quanta_vm_accepted_to_running_seconds_bucket",
                         "quanta_build_info"},
    }
    for job, names in required.items():
        assert names <= exported[job], f"{job} lacks {names - exported[job]}"
    # No per-VM or per-host labels: the label values never name a VM or a host.
    text = "\n".join(scraped.values())
    assert "deploy-0" not in text and "sim-00000" not in text
    assert re.search(r'^quanta_scheduler_hosts\{state="ready"\} 3\.0$', scraped["scheduler-0"], re.M)


def test_local_prometheus_scrapes_every_process_and_has_the_dashboards_data(live):
    system, scraped = live
    prometheus = system.prometheus
    dashboard = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    assert "quanta_vm_creations_running_total" in dashboard

    def running() -> list[dict]:
        return prometheus.query("sum(quanta_vm_creations_running_total) >= 4")

    wait_until(running, timeout=60, interval=0.5, message="Prometheus to have scraped 4 running creations",
               seen=lambda: "running creations in Prometheus: "
               + str([r["value"][1] for r in prometheus.query("sum(quanta_vm_creations_running_total)")]))

    def targets() -> str:
        return ", ".join(sorted(f"{r['metric'].get('name') or r['metric']['job']} up={r['value'][1]}"
                                for r in prometheus.query("up")))

    up = wait_until(lambda: len(targets := prometheus.query("up == 1")) == len(scraped) + 1 and targets,
                    timeout=60, interval=0.5, message=f"all {len(scraped) + 1} targets up", seen=targets)
    assert {(r["metric"]["job"], r["metric"].get("name")) for r in up} == \
        {(job_of(name), name) for name in scraped} | {("etcd", "etcd")}
    # Every dashboard metric a process has samples of is in Prometheus too.
    sampled = {line.split("{")[0].split()[0] for text in scraped.values() for line in text.splitlines()
               if line and not line.startswith("#")}
    in_prometheus = {r["metric"]["__name__"] for r in prometheus.query('count by (__name__) ({__name__=~"quanta_.*"})')}
    assert (dashboard & sampled) - in_prometheus == set()
    # The packaged alert rules are loaded.
    assert set(prometheus.rule_groups()) == {g["name"] for g in load_yaml(ALERT_RULES)["groups"]}


def test_failure_counters_start_at_zero_for_their_known_label_values(live):
    _system, scraped = live
    frontend = scraped["frontend-0"]
    for method in ("CreateVm", "DrainHost", "ListTenants"):
        for code in ("INTERNAL", "UNAVAILABLE", "NOT_FOUND"):
            series = rf'^quanta_api_requests_total\{{code="{code}",method="{method}"\}} 0\.0$'
            assert re.search(series, frontend, re.M), f"{method} {code}"
    assert re.search(r'^quanta_vm_creations_failed_total\{reason="CapacityExceeded"\} 0\.0$', scraped["agent-0"], re.M)
    for name, text in scraped.items():
        assert re.search(r'^quanta_etcd_request_errors_total\{code="UNAVAILABLE",op="txn"\} 0\.0$', text, re.M), name


def test_a_healthy_systems_dashboard_has_data_in_every_panel(live):
    """No "No data" panel: every query of the dashboard returns a series (0 where nothing
    failed), once Prometheus has two scrapes for rate()."""
    system, _scraped = live
    exprs = [expr.replace("$__rate_interval", "1m") for expr in dashboard_exprs()]
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [expr for expr in exprs if not system.prometheus.query(expr)]
        return not empty

    wait_until(all_have_data, timeout=60, interval=1, message="every dashboard query to return data",
               seen=lambda: f"without data: {empty}")


def test_prometheus_server_stops_and_reports_a_missing_binary(tmp_path):
    with pytest.raises(FileNotFoundError, match="prometheus"):
        PrometheusServer(tmp_path / "none", binary=str(tmp_path / "no-prometheus")).start({})
    server = PrometheusServer(tmp_path / "p").start({})
    try:
        assert server.query("vector(1)")[0]["value"][1] == "1"
        with pytest.raises(RuntimeError, match="parse error"):
            server.query("sum(")
    finally:
        server.stop()
    assert server.process.poll() is not None
    server.stop()  # idempotent


def test_prometheus_server_refuses_to_run_without_alert_rules(tmp_path):
    with pytest.raises(FileNotFoundError, match="no alert rules at .*missing.yml"):
        PrometheusServer(tmp_path / "a", rules=tmp_path / "missing.yml").start({})
    empty = tmp_path / "empty.yml"
    empty.write_text("groups: []\n")
    server = PrometheusServer(tmp_path / "b", rules=empty)
    with pytest.raises(RuntimeError, match="loaded no alert rule groups"):
        server.start({})
    assert server.process is not None and server.process.poll() is not None, "left running after the failure"


def test_quanta_up_prometheus_prints_its_url_and_stops_it(tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    up = subprocess.Popen([QUANTA, "up", "--hosts", "2", "--frontends", "1", "--latency", "zero", "--prometheus",
                           "--data-dir", str(tmp_path / "data")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(up.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Quanta is up" in line for line in output) or up.poll() is not None,
                   timeout=120, message="quanta up --prometheus to report it is up",
                   seen=lambda: f"its output: {''.join(output[-20:])!r}")
        assert up.poll() is None, "".join(output)
        url = next(re.search(r"prometheus:\s+(http://127\.0\.0\.1:\d+)", line).group(1)
                   for line in output if re.search(r"prometheus:\s+http", line))
        state = json.loads((tmp_path / "state" / "quanta" / "local.json").read_text())
        assert state["prometheus"] == url

        def frontend_up() -> bool:
            query = urllib.parse.urlencode({"query": 'up{job="quanta-frontend"} == 1'})
            with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
                return bool(json.load(response)["data"]["result"])

        def targets() -> str:
            with urllib.request.urlopen(f"{url}/api/v1/query?query=up", timeout=10) as response:
                result = json.load(response)["data"]["result"]
            return ", ".join(sorted(f"{r['metric']['job']} up={r['value'][1]}" for r in result))

        wait_until(frontend_up, timeout=60, interval=0.5, message="Prometheus to scrape the frontend", seen=targets)
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{url}/-/ready", timeout=5)
    finally:
        if up.poll() is None:  # a failed assertion: let quanta up stop its children, as Ctrl-C does
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
