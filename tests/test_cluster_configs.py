"""The cluster configs in cluster/: Ray's own schema accepts every cluster launcher config, and none of them opens the
cluster to the internet, holds a credential, or starts Ray with `ray stop`.

Each rule is a checker that returns what it found wrong (empty: nothing). The real files must give nothing; the
negative tests feed the same checkers deliberately bad configs, so that every rule is seen to fail.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ("cluster.yaml", "gcp.yaml", "onprem.yaml")  # read by `ray up` / `ray submit`
KUBERAY_MANIFESTS = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/mlflow.yaml")  # by `kubectl apply`
# The JSON schema `ray up` validates a cluster config against, as shipped inside the installed Ray.
RAY_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())

START_LISTS = ("head_start_ray_commands", "worker_start_ray_commands")
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                 *START_LISTS)
NODE_TYPE_COMMAND_LISTS = ("initialization_commands", "worker_setup_commands")  # a node type's own lists
WORLD = {"0.0.0.0/0", "::/0"}
EVERY_INTERFACE = {"0.0.0.0", "::", "[::]", "*"}
EXPOSED_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def load_all(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((CLUSTER / name).read_text()) if doc]


def files(pattern: str = "*") -> list[str]:
    """The files under cluster/ matching ``pattern``, relative to it."""
    return sorted(p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob(pattern) if p.is_file())


# --- the checkers ---------------------------------------------------------------------------------------------------

def ray_up_errors(config: dict[str, Any]) -> list[str]:
    """What `ray up` would refuse before it calls the cloud: the schema shipped with Ray, on the file as written and
    after Ray's own preparation (defaults filled in; the local provider's single node type). prepare_config and
    validate_config are what `ray up` runs first; they are private to Ray, so a Ray upgrade that moves them fails
    here loudly rather than skipping the check."""
    validator = jsonschema.validators.validator_for(RAY_SCHEMA)(RAY_SCHEMA)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(config)]
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema, ValueError, click's abort: whatever `ray up` would stop with
        errors.append(f"prepared: {type(exc).__name__}: {exc}")
    return errors


def commands(config: dict[str, Any]) -> list[str]:
    """Every shell command of a launcher config: the global lists and each node type's own."""
    found = [cmd for key in COMMAND_LISTS for cmd in config.get(key) or []]
    for node_type in (config.get("available_node_types") or {}).values():
        found += [cmd for key in NODE_TYPE_COMMAND_LISTS for cmd in node_type.get(key) or []]
    return found


def walk(node: Any):
    """Every mapping inside a parsed YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def rules_open_to_the_world(config: Any) -> list[str]:
    """Inbound rules that open anything but SSH (tcp/22) to every address: AWS IpPermissions (the provider's
    security_group, or anywhere else) and GCP-style firewall rules (sourceRanges + allowed)."""
    found = []
    for mapping in walk(config):
        for rule in mapping.get("IpPermissions") or []:
            ranges = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | \
                {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
            ssh = str(rule.get("IpProtocol")) == "tcp" and rule.get("FromPort") == rule.get("ToPort") == 22
            if ranges & WORLD and not ssh:
                found.append(f"IpPermissions {rule}")
        if WORLD & set(mapping.get("sourceRanges") or []):
            for allowed in mapping.get("allowed") or []:
                if not (allowed.get("IPProtocol") == "tcp" and [str(p) for p in allowed.get("ports", [])] == ["22"]):
                    found.append(f"firewall {mapping.get('name', '?')}: {allowed}")
    return found


AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
SECRET_FIELD = re.compile(r"aws_secret_access_key|aws_session_token|gcp_credentials|-----BEGIN", re.IGNORECASE)
# NAME=value or name: value on one line, where the name holds a secret's word (MLFLOW_TRACKING_TOKEN=abc...); a
# version pin (tokenizers==0.22.2, in the image's lock) is a comparison, not an assignment.
SECRET_ASSIGNMENT = re.compile(r"\b(?P<name>\w*(?:password|passwd|secret|token)\w*)[\"']?[ \t]*(?:=(?!=)|:)[ \t]*"
                               r"[\"']?(?P<value>[^\s\"'#,}]+)", re.IGNORECASE)
SECRET_NAME = re.compile(r"password|passwd|secret|token", re.IGNORECASE)
NOT_A_LITERAL = ("$", "<", "~", "/", "{")  # a variable, a placeholder, a path: not a secret's value


def credentials(text: str, docs: list[Any] = ()) -> list[str]:
    """Credentials written into a file: AWS key ids, secret-key and service-account-key fields, private keys, and
    secrets (passwords, tokens) given literal values, in the text (YAML, shell) or in the parsed YAML ``docs``'
    Kubernetes ``env`` entries (``name: RAY_AUTH_TOKEN`` with a literal ``value``)."""
    found = [f"AWS access key id {m.group()}" for m in AWS_ACCESS_KEY.finditer(text)]
    found += [f"credential field {m.group()!r}" for m in SECRET_FIELD.finditer(text)]
    found += [f"literal secret {m['name']}={m['value']}" for m in SECRET_ASSIGNMENT.finditer(text)
              if not m["value"].startswith(NOT_A_LITERAL)]
    for entry in (mapping for doc in docs for mapping in walk(doc)):
        name, value = entry.get("name"), entry.get("value")
        if isinstance(name, str) and SECRET_NAME.search(name) and isinstance(value, str) and value \
                and not value.startswith(NOT_A_LITERAL):
            found.append(f"literal secret in env entry {name}")
    return found


BIND = re.compile(r"(?:--dashboard-host|--host|(?<![\w-])-h)(?:=|\s+)[\"']?(?P<address>[^\s\"']*)")


def public_binds(config: dict[str, Any]) -> list[str]:
    """Commands that bind a server (MLflow, the Ray dashboard) to every interface instead of one address."""
    return [cmd for cmd in commands(config) for m in BIND.finditer(cmd) if m["address"] in EVERY_INTERFACE]


RAY_STOP = re.compile(r"\bray\s+stop\b")


def ray_stops(config: dict[str, Any]) -> list[str]:
    """Start commands that run `ray stop`, which stops every Ray process on the machine, not just this cluster's."""
    return [cmd for key in START_LISTS for cmd in config.get(key) or [] if RAY_STOP.search(cmd)]


def shell_syntax_errors(config: dict[str, Any]) -> list[str]:
    """Commands bash cannot parse: an unbalanced quote or parenthesis, an unquoted <placeholder> read as a
    redirection, or a command cut short by an unquoted ` #` that YAML took for a comment."""
    found = []
    for cmd in commands(config):
        check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        if check.returncode != 0:
            found.append(f"{cmd!r}: {check.stderr.strip()}")
    return found


def unparsable(path: Path) -> list[str]:
    """Why a YAML file (one or several documents) does not parse, if it does not."""
    try:
        list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        return [str(exc)]
    return []


def ray_cluster_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RayCluster specs in KubeRay manifests: RayClusters' own and those RayJobs create."""
    specs = [doc["spec"] for doc in docs if doc.get("kind") == "RayCluster"]
    return specs + [doc["spec"]["rayClusterSpec"] for doc in docs
                    if doc.get("kind") == "RayJob" and "rayClusterSpec" in doc["spec"]]


def exposed_services(docs: list[dict[str, Any]]) -> list[str]:
    """Services reachable from outside the Kubernetes cluster: LoadBalancer or NodePort Services, external IPs, or a
    Ray head Service of such a type."""
    found = [f"Service {doc['metadata']['name']}: type {doc['spec'].get('type', 'ClusterIP')}, external IPs "
             f"{doc['spec'].get('externalIPs', [])}" for doc in docs
             if doc.get("kind") == "Service" and (doc["spec"].get("type") in EXPOSED_SERVICE_TYPES
                                                  or doc["spec"].get("externalIPs"))]
    return found + [f"Ray head service: {spec['headGroupSpec']['serviceType']}" for spec in ray_cluster_specs(docs)
                    if spec["headGroupSpec"].get("serviceType") in EXPOSED_SERVICE_TYPES]


def worker_groups_without_gpus(docs: list[dict[str, Any]]) -> list[str]:
    """Worker groups none of whose containers has an nvidia.com/gpu limit (Kubernetes schedules GPUs by limits)."""
    found = []
    for spec in ray_cluster_specs(docs):
        for group in spec.get("workerGroupSpecs", []):
            containers = group["template"]["spec"]["containers"]
            if not any(int((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                       for c in containers):
                found.append(group["groupName"])
    return found


# --- the real files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_every_launcher_config_passes_rays_own_schema(name):
    assert ray_up_errors(load(name)) == []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_no_rule_opens_a_port_other_than_ssh_to_the_world(name):
    assert rules_open_to_the_world(load(name)) == []


@pytest.mark.parametrize("name", files())
def test_no_file_holds_a_credential(name):
    docs = load_all(name) if name.endswith((".yaml", ".yml")) else []
    assert credentials((CLUSTER / name).read_text(), docs) == []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_mlflow_and_the_dashboard_are_never_bound_to_every_interface(name):
    assert public_binds(load(name)) == []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_ray_starts_without_ray_stop_even_after_rays_defaults_are_filled_in(name):
    # A command list left out of the file is taken from Ray's defaults, whose start commands begin with `ray stop`.
    config = load(name)
    assert ray_stops(config) == []
    assert ray_stops(prepare_config(copy.deepcopy(config))) == []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_every_command_is_valid_bash(name):
    assert shell_syntax_errors(load(name)) == []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_the_head_serves_mlflow_on_the_address_its_driver_is_given(name):
    # The driver (`ray submit` runs it on the head) reads MLFLOW_TRACKING_URI; the server must listen where it points.
    config = load(name)
    servers = [cmd for cmd in config["head_start_ray_commands"] if "mlflow server" in cmd]
    assert len(servers) == 1 and '--host "$NODE_IP" --port 5000' in servers[0]
    assert any("MLFLOW_TRACKING_URI=http://$NODE_IP:5000" in cmd for cmd in config["head_setup_commands"])
    assert any("source ~/.dmh/env" in cmd and "~/.bashrc" in cmd for cmd in config["setup_commands"])


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_the_head_starts_ray_with_the_autoscaler_and_token_auth(name):
    config = load(name)
    starts = [cmd for cmd in config["head_start_ray_commands"] if "ray start --head" in cmd]
    assert len(starts) == 1 and "--autoscaling-config=~/ray_bootstrap_config.yaml" in starts[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # every node holds the token
    assert any("RAY_AUTH_MODE=token" in cmd for cmd in config["setup_commands"])


@pytest.mark.parametrize("name", files("*.yaml") + files("*.yml"))
def test_every_yaml_file_parses(name):
    assert unparsable(CLUSTER / name) == []


def test_kuberay_exposes_nothing_outside_the_kubernetes_cluster():
    assert exposed_services([doc for name in KUBERAY_MANIFESTS for doc in load_all(name)]) == []


def test_the_kuberay_worker_group_requests_a_gpu():
    docs = load_all("kuberay/raycluster.yaml")
    assert [g["groupName"] for spec in ray_cluster_specs(docs) for g in spec["workerGroupSpecs"]] == ["gpu"]
    assert worker_groups_without_gpus(docs) == []


def test_kubernetes_mlflow_admits_only_the_ray_clusters_pods():
    docs = {doc["kind"]: doc for doc in load_all("kuberay/mlflow.yaml")}
    cluster = next(doc for doc in load_all("kuberay/raycluster.yaml") if doc["kind"] == "RayCluster")
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert [peer["podSelector"]["matchLabels"] for rule in policy["ingress"] for peer in rule["from"]] == \
        [{"ray.io/cluster": cluster["metadata"]["name"]}]


def test_the_rayjob_entrypoint_is_a_valid_sweep_command_that_asks_for_gpus():
    job = load_all("kuberay/rayjob.yaml")[0]
    python, script, *args = shlex.split(job["spec"]["entrypoint"])
    # The image copies the checkout's sweeps/ to /home/ray/dmh/sweeps (cluster/Dockerfile).
    assert python == "python" and script.startswith("/home/ray/dmh/sweeps/")
    relative = script.removeprefix("/home/ray/dmh/")
    assert (REPO / relative).is_file()
    sweep = importlib.import_module(relative.removesuffix(".py").replace("/", ".")).SWEEP
    from dmh.sweep import build_parser

    parsed = build_parser(sweep).parse_args(args)
    assert parsed.preset == "paper" and parsed.tracking_uri == "http://mlflow:5000"
    assert parsed.gpus_per_trial > 0  # the head offers no CPUs: trials must ask for the GPU workers


# --- every rule can fail --------------------------------------------------------------------------------------------

def mutated(name: str, change) -> dict[str, Any]:
    config = copy.deepcopy(load(name))
    change(config)
    return config


def add_aws_rule(port: int, cidr: str = "0.0.0.0/0"):
    ranges = {"Ipv6Ranges": [{"CidrIpv6": cidr}]} if ":" in cidr else {"IpRanges": [{"CidrIp": cidr}]}

    def change(config):
        config["provider"]["security_group"]["IpPermissions"] = [
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}]
    return change


def set_key(key: str, value: Any):
    def change(config):
        config[key] = value
    return change


def append_command(key: str, cmd: str):
    def change(config):
        config[key] = [*config[key], cmd]
    return change


BAD_LAUNCHER_CONFIGS = {
    "ray up: a misspelt field": (ray_up_errors, mutated("cluster.yaml", set_key("worker_setup_command", []))),
    "ray up: a node type without resources": (
        ray_up_errors, mutated("gcp.yaml", lambda c: c["available_node_types"]["gpu_worker"].pop("resources"))),
    "ray up: node types for the local provider": (
        ray_up_errors, mutated("onprem.yaml", set_key("available_node_types", {"n": {"resources": {},
                                                                                     "node_config": {}}}))),
    "world: the dashboard port": (rules_open_to_the_world, mutated("cluster.yaml", add_aws_rule(8265))),
    "world: MLflow to ::/0": (rules_open_to_the_world, mutated("cluster.yaml", add_aws_rule(5000, "::/0"))),
    "world: a GCP firewall rule": (rules_open_to_the_world, mutated("gcp.yaml", set_key("firewall", [
        {"name": "mlflow", "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["5000"]}]}]))),
    "bind: MLflow on 0.0.0.0": (public_binds, mutated("cluster.yaml", append_command(
        "head_start_ray_commands", "mlflow server --host 0.0.0.0 --port 5000"))),
    "bind: the dashboard on 0.0.0.0": (public_binds, mutated("onprem.yaml", append_command(
        "head_start_ray_commands", "ray start --head --dashboard-host=0.0.0.0"))),
    "stop: ray stop before starting": (ray_stops, mutated("gcp.yaml", lambda c: c["worker_start_ray_commands"].insert(
        0, "ray stop"))),
    "stop: a start list left to Ray's defaults": (
        lambda config: ray_stops(prepare_config(config)),
        mutated("cluster.yaml", lambda c: c.pop("worker_start_ray_commands"))),
    "bash: an unquoted placeholder": (shell_syntax_errors, mutated("cluster.yaml", append_command(
        "setup_commands", "aws s3 ls --region <your-region> | head"))),
    # YAML reads this plain scalar up to the ` #` only, leaving bash an unclosed quote.
    "bash: a command cut at an unquoted ' #'": (shell_syntax_errors, mutated("onprem.yaml", append_command(
        "setup_commands", yaml.safe_load("- echo 'keep this #and this'")[0]))),
}


@pytest.mark.parametrize("check, config", BAD_LAUNCHER_CONFIGS.values(), ids=BAD_LAUNCHER_CONFIGS.keys())
def test_a_launcher_config_breaking_a_rule_is_caught(check, config):
    assert check(config)


BAD_YAML_TEXTS = {
    "an AWS access key id": "aws_access_key_id: AKIAABCDEFGHIJKLMNOP",
    "an AWS secret key field": "setup_commands: [export AWS_SECRET_ACCESS_KEY=$FROM_SOMEWHERE]",
    "a private key": "ssh_private_key: |\n  -----BEGIN OPENSSH PRIVATE KEY-----\n  b3BlbnNzaA==\n",
    "a password in YAML": "database:\n  password: hunter2hunter2\n",
    "a token in a shell command": "setup_commands:\n  - export MLFLOW_TRACKING_TOKEN=0123456789abcdef\n",
    "a token in a Kubernetes env entry": "env:\n  - name: RAY_AUTH_TOKEN\n    value: 0123456789abcdef\n",
    "GCP credentials in the provider": "provider:\n  gcp_credentials:\n    type: service_account\n",
}


@pytest.mark.parametrize("text", BAD_YAML_TEXTS.values(), ids=BAD_YAML_TEXTS.keys())
def test_a_file_holding_a_credential_is_caught(text):
    assert credentials(text, list(yaml.safe_load_all(text)))


def test_references_to_secrets_are_not_taken_for_secrets():
    text = ('file_mounts:\n  "~/.ray/auth_token": "~/.ray/auth_token"\nenv:\n  - name: RAY_AUTH_TOKEN\n'
            "    valueFrom: {secretKeyRef: {name: dmh, key: auth_token}}\n"
            "cmd: RAY_AUTH_MODE=token MY_TOKEN=$TOKEN PASSWORD=<your-password>\n")
    assert credentials(text, list(yaml.safe_load_all(text))) == []


def test_a_pinned_package_named_like_a_secret_is_not_taken_for_one():
    assert credentials("tokenizers==0.22.2\nsecretstorage==3.3.3\n") == []


def kuberay(*docs: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(doc) for doc in docs]


RAY_CLUSTER = """
kind: RayCluster
spec:
  headGroupSpec: {serviceType: %s}
  workerGroupSpecs:
    - groupName: gpu
      template: {spec: {containers: [{name: w, resources: {limits: %s}}]}}
"""
BAD_KUBERAY = {
    "a LoadBalancer Service": (exposed_services, kuberay("{kind: Service, metadata: {name: m}, spec: "
                                                         "{type: LoadBalancer}}")),
    "a NodePort Service": (exposed_services, kuberay("{kind: Service, metadata: {name: m}, spec: {type: NodePort}}")),
    "a Service with external IPs": (exposed_services, kuberay("{kind: Service, metadata: {name: m}, spec: "
                                                              "{externalIPs: [203.0.113.7]}}")),
    "a LoadBalancer head": (exposed_services, kuberay(RAY_CLUSTER % ("LoadBalancer", "{nvidia.com/gpu: 1}"))),
    "a worker group without GPUs": (worker_groups_without_gpus, kuberay(RAY_CLUSTER % ("ClusterIP", "{cpu: 4}"))),
    "a RayJob's worker group without GPUs": (worker_groups_without_gpus, kuberay(
        "{kind: RayJob, spec: {rayClusterSpec: {headGroupSpec: {}, workerGroupSpecs: [{groupName: g, template: "
        "{spec: {containers: [{name: w}]}}}]}}}")),
}


@pytest.mark.parametrize("check, docs", BAD_KUBERAY.values(), ids=BAD_KUBERAY.keys())
def test_a_kuberay_manifest_breaking_a_rule_is_caught(check, docs):
    assert check(docs)


def test_a_yaml_file_that_does_not_parse_is_caught(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("setup_commands:\n  - echo ok\n  bad: [unclosed\n")
    assert unparsable(broken)
