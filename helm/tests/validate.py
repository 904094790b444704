#!/usr/bin/env python3
"""Validates the Outflow Helm chart offline.

For every values file in helm/tests/values/ it renders the chart and lints
it with the real Helm SDK (PyPI helm-python-sdk), validates every rendered
manifest against the Kubernetes schemas of a pinned version (PyPI
kubernetes-validate, strict: unknown fields fail) and the cert-manager /
Prometheus Operator resources against the subset of their CRD schemas the
chart uses, then asserts the chart's semantics:

* aggregator PodDisruptionBudget minAvailable == Raft quorum, peers == replicas;
* the agent has no capability beyond the documented list (docs/deployment.md),
  no privilege, a read-only root, and loses NET_RAW when capture is off;
* every option of the collector, aggregator and agent config structs (parsed
  from their Rust source) is in values.yaml with the binary's default, or is
  set by the chart (flag/env seen in a rendered manifest); no values key is
  unknown to a binary (they refuse unknown keys);
* values.schema.json rejects wrong types; bad combinations fail to render;
* identities: certificates carry the URI/CN that outflow-pki checks, and
  each agent is bound to its node;
* NetworkPolicies open exactly the design's ports; no RBAC; no SA tokens;
* Dockerfiles: every COPY source exists and is not excluded by .dockerignore.

Run from anywhere: python3 helm/tests/validate.py. Exit 0 when all is well;
otherwise every failure is listed and the exit code is 1 (2: modules missing).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "outflow"
VALUES_DIR = ROOT / "helm" / "tests" / "values"
K8S_VERSION = "1.33.0"  # pinned: the chart needs >= 1.30 (appArmorProfile)
RELEASE = "outflow"
# Where to write each container's config and argv (tests/tests/helm_chart.rs).
DUMP = Path(os.environ["OUTFLOW_HELM_DUMP"]) if os.environ.get("OUTFLOW_HELM_DUMP") else None
NAMESPACE = "outflow"

try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"MISSING-MODULES: {e} (pip install -r .ci/requirements.txt)")
    sys.exit(2)

FAILURES: list[str] = []
CHECKS = 0


def check(cond: bool, what: str) -> bool:
    global CHECKS
    CHECKS += 1
    if not cond:
        FAILURES.append(what)
    return cond


# --------------------------------------------------------------------------
# Rendering


def load_values(name: str) -> dict:
    return yaml.safe_load((VALUES_DIR / name).read_text()) or {}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(chart, values: dict) -> tuple[list[dict], str]:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs, notes = [], ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for d in yaml.safe_load_all(text):
            if d:
                d.setdefault("__file", path)
                docs.append(d)
    return docs, notes


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, suffix: str) -> dict | None:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found[0] if len(found) == 1 else None


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def args_of(c: dict) -> list[str]:
    out = list(c.get("command", [])) + list(c.get("args", []))
    return [a for arg in out for a in arg.split()]


def flags_of(c: dict) -> set[str]:
    return {a.split("=", 1)[0] for a in args_of(c) if a.startswith("--")}


# --------------------------------------------------------------------------
# Schemas of the custom resources the chart renders (the fields it uses,
# from cert-manager.io/v1 and monitoring.coreos.com/v1), closed to typos.

S = {"type": "string"}
ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": S, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": S},
}
META = {"type": "object", "required": ["name", "namespace"]}
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": META,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "additionalProperties": False,
                "properties": {
                    "secretName": S,
                    "commonName": S,
                    "isCA": {"type": "boolean"},
                    "duration": {"type": "string", "pattern": r"^([0-9]+(h|m|s))+$"},
                    "renewBefore": {"type": "string", "pattern": r"^([0-9]+(h|m|s))+$"},
                    "subject": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"organizations": {"type": "array", "items": S}},
                    },
                    "uris": {"type": "array", "items": S},
                    "dnsNames": {"type": "array", "items": S},
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "digital signature",
                                "key encipherment",
                                "server auth",
                                "client auth",
                            ]
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                    "issuerRef": ISSUER_REF,
                },
            },
        },
    },
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object"},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "additionalProperties": False,
                        "properties": {"secretName": S},
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object"},
                    "namespaceSelector": {"type": "object"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": S,
                                "path": S,
                                "interval": S,
                                "scheme": {"enum": ["http", "https"]},
                                "tlsConfig": {"type": "object"},
                                "authorization": {
                                    "type": "object",
                                    "required": ["credentials"],
                                    "properties": {
                                        "type": S,
                                        "credentials": {
                                            "type": "object",
                                            "required": ["name", "key"],
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_manifest(doc: dict, where: str) -> None:
    clean = {k: v for k, v in doc.items() if k != "__file"}
    key = (clean.get("apiVersion"), clean.get("kind"))
    name = f"{where}: {key[1]}/{clean.get('metadata', {}).get('name')}"
    check(
        clean.get("metadata", {}).get("namespace") == NAMESPACE,
        f"{name}: not in the release namespace",
    )
    if key in CRD_SCHEMAS:
        errs = list(jsonschema.Draft7Validator(CRD_SCHEMAS[key]).iter_errors(clean))
        check(not errs, f"{name}: {'; '.join(e.message for e in errs)}")
        return
    try:
        kubernetes_validate.validate(clean, K8S_VERSION, strict=True)
        check(True, name)
    except kubernetes_validate.SchemaNotFoundError:
        check(False, f"{name}: no Kubernetes {K8S_VERSION} schema for {key}")
    except kubernetes_validate.ValidationError as e:
        check(False, f"{name}: {str(e).splitlines()[0]} at {list(e.path)}")


# --------------------------------------------------------------------------
# Config structs: fields and defaults parsed from the Rust source.


def rust_struct_fields(src: str, struct: str) -> list[str]:
    m = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", src, re.S)
    if not m:
        raise SystemExit(f"struct {struct} not found")
    return re.findall(r"^\s*pub (\w+):", m.group(1), re.M)


def rust_literal(expr: str):
    e = expr.strip()
    if e in ("None",) or e.endswith("::default()") or e in ("Vec::new()", "Default::default()"):
        return {"None": None, "Vec::new()": []}.get(e, "<default>")
    if e in ("true", "false"):
        return e == "true"
    m = re.fullmatch(r'"([^"]*)"\.(into|to_string)\(\)', e) or re.fullmatch(
        r'(?:String|PathBuf)::from\("([^"]*)"\)', e
    )
    if m:
        return m.group(1)
    m = re.fullmatch(r"SocketAddr::from\(\(\[(\d+), (\d+), (\d+), (\d+)\], (\d+)\)\)", e)
    if m:
        return "{}.{}.{}.{}:{}".format(*m.groups())
    if re.fullmatch(r"[0-9_ .<*+]+", e):
        return eval(e.replace("_", ""), {"__builtins__": {}})  # digits and operators only
    return f"<unparsed {e}>"


def rust_defaults(src: str, struct: str) -> dict:
    m = re.search(r"impl Default for " + struct + r"\s*\{.*?\n\}\n", src, re.S)
    if not m:
        raise SystemExit(f"impl Default for {struct} not found")
    out = {}
    for name, expr in re.findall(r"^\s{12}(\w+): (.+?),\s*$", m.group(0), re.M):
        out[name] = rust_literal(expr)
    return out


def same_default(rust, value) -> bool:
    if rust == "<default>":  # an empty map/struct/collection default
        return value in ({}, [], None)
    if isinstance(rust, bool) or isinstance(value, bool):
        return rust is value
    if isinstance(rust, (int, float)) and isinstance(value, (int, float)):
        return float(rust) == float(value)
    return rust == value


# Options the chart sets itself, and how (flags or environment variables
# that must appear in at least one rendered variant).
MANAGED = {
    "collector": {
        "id": ["--id"],
        "listen": ["--listen"],
        "advertise": ["--advertise"],
        "api": ["--api"],
        "aggregators": ["--aggregators"],
        "data": ["--data"],
        "certs": ["--certs"],
        "cert_stem": ["cert-volume:server"],
        "aggregator_server_name": ["--aggregator-server-name"],
        "otlp_endpoint": ["--otlp-endpoint"],
        "otlp_headers": ["env:OTEL_EXPORTER_OTLP_HEADERS"],
        "otlp_ca": ["--otlp-ca"],
    },
    "aggregator": {
        "id": ["--id"],
        "listen": ["--listen"],
        "api": ["--api"],
        "peers": ["--peers"],
        "data": ["--data"],
        "certs": ["--certs"],
        "api_token": ["env:OUTFLOW_API_TOKEN"],
    },
    "agent": {
        "host_id": ["--host-id"],
        "collector": ["--collector"],
        "certs": ["--certs"],
        "cert_stem": ["agent-cert-files"],
        "spool": ["--spool"],
    },
}
STRUCTS = {
    "collector": ("collector/src/config.rs", "CollectorConfig"),
    "aggregator": ("aggregator/src/config.rs", "AggregatorConfig"),
    "agent": ("agent/src/config.rs", "AgentConfig"),
}


def evidence(docs: list[dict]) -> dict[str, set[str]]:
    """Flags, env vars and certificate layouts each component's pods use."""
    seen: dict[str, set[str]] = {"collector": set(), "aggregator": set(), "agent": set()}
    for d in docs:
        if d["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        comp = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for c in containers(d):
            seen[comp] |= flags_of(c)
            seen[comp] |= {"env:" + e["name"] for e in c.get("env", [])}
        for v in d["spec"]["template"]["spec"]["volumes"]:
            if v["name"] != "certs":
                continue
            if "projected" in v:
                paths = {i["path"] for s in v["projected"]["sources"] for i in s["secret"]["items"]}
                if {"server.pem", "server-key.pem", "ca.pem"} <= paths:
                    seen[comp].add("cert-volume:server")
            if "hostPath" in v or "secret" in v:
                seen[comp].add("agent-cert-files")
    return seen


def check_config_keys(values: dict, seen: dict[str, set[str]]) -> None:
    for comp, (path, struct) in STRUCTS.items():
        src = (ROOT / path).read_text()
        fields = rust_struct_fields(src, struct)
        defaults = rust_defaults(src, struct)
        check(set(fields) == set(defaults), f"{struct}: could not parse every default ({set(fields) ^ set(defaults)})")
        cfg = values[comp]["config"]
        for f in fields:
            if f in MANAGED[comp]:
                check(f not in cfg, f"{comp}.config.{f} is set by the chart; it must not be in values")
                check(
                    any(ev in seen[comp] for ev in MANAGED[comp][f]),
                    f"{comp}: option `{f}` is neither in values nor set by any rendered variant ({MANAGED[comp][f]})",
                )
                continue
            if not check(f in cfg, f"{comp}.config.{f} (read by {struct}) is missing from values.yaml"):
                continue
            check(
                same_default(defaults[f], cfg[f]),
                f"{comp}.config.{f}: values.yaml has {cfg[f]!r}, the binary's default is {defaults[f]!r}",
            )
        for k in cfg:
            check(k in fields, f"{comp}.config.{k} is not an option of {struct} (the binary refuses unknown keys)")


# --------------------------------------------------------------------------
# Semantics


def documented_capabilities() -> set[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    m = re.search(r"<!-- agent-capabilities -->(.*?)<!-- /agent-capabilities -->", text, re.S)
    if not check(m is not None, "docs/deployment.md has no agent capability table"):
        return set()
    return set(re.findall(r"CAP_([A-Z_]+)", m.group(1)))


def check_agent(docs: list[dict], values: dict, where: str, caps_doc: set[str]) -> None:
    sets = by_kind(docs, "DaemonSet")
    if not values["agent"]["enabled"]:
        check(not sets, f"{where}: agent disabled but DaemonSets rendered")
        return
    ident = values["agent"]["identity"]
    expected = 1 if ident["source"] == "hostPath" else len(ident["nodes"])
    check(len(sets) == expected, f"{where}: {len(sets)} agent DaemonSets, expected {expected}")
    capture = values["agent"]["config"]["capture"]
    for ds in sets:
        pod = ds["spec"]["template"]["spec"]
        check(pod.get("hostPID") is True and pod.get("hostNetwork") is True, f"{where}: agent needs hostPID and hostNetwork")
        check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{where}: agent on the host network must use ClusterFirstWithHostNet")
        check(pod.get("automountServiceAccountToken") is False, f"{where}: agent mounts a token")
        tolerations = pod.get("tolerations", [])
        check({"operator": "Exists"} in tolerations, f"{where}: agent does not tolerate every taint")
        for c in pod["containers"]:
            sc = c["securityContext"]
            add = set(sc["capabilities"].get("add", []))
            check(sc["capabilities"].get("drop") == ["ALL"], f"{where}: agent must drop ALL capabilities")
            check(add <= caps_doc, f"{where}: agent capabilities {sorted(add - caps_doc)} are not documented")
            check(("NET_RAW" in add) == bool(capture), f"{where}: NET_RAW must follow agent.config.capture={capture}")
            check(sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False, f"{where}: agent privileged")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: agent root filesystem writable")
            check("limits" in c["resources"], f"{where}: agent without resource limits")
            args = args_of(c)
            check("--host-id=$(NODE_NAME)" in args, f"{where}: agent host id is not the node name")
            env = {e["name"]: e for e in c["env"]}
            check(
                env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
                f"{where}: NODE_NAME is not the downward-API node name",
            )
            want = values["agent"]["collectorEndpoint"] or f"https://{RELEASE}-collector.{NAMESPACE}.svc.cluster.local:7201"
            check(f"--collector={want}" in args, f"{where}: agent collector endpoint is not {want}")
        vols = {v["name"]: v for v in pod["volumes"]}
        if ident["source"] == "perNode":
            node = ds["metadata"]["annotations"]["outflow.dev/node"]
            terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            check(
                terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}],
                f"{where}: agent set for {node} is not pinned to that node",
            )
            items = {i["path"] for i in vols["certs"]["secret"]["items"]}
            check(items == {"ca.pem", f"agent-{node}.pem", f"agent-{node}-key.pem"}, f"{where}: {node} cert files {items}")
            cert = [
                d
                for d in by_kind(docs, "Certificate")
                if d["spec"]["secretName"] == vols["certs"]["secret"]["secretName"]
            ]
            if values["tls"]["certManager"]["enabled"]:
                check(
                    len(cert) == 1
                    and cert[0]["spec"].get("commonName", node) == node
                    and ("commonName" in cert[0]["spec"]) == (len(node) <= 64)
                    and cert[0]["spec"]["uris"] == [f"urn:outflow:agent:{node}"]
                    and "server auth" not in cert[0]["spec"]["usages"],
                    f"{where}: no agent certificate bound to node {node}",
                )
        else:
            check(vols["certs"].get("hostPath", {}).get("path") == ident["hostPath"], f"{where}: agent certs hostPath")


def check_servers(docs: list[dict], values: dict, where: str) -> None:
    agg = values["aggregator"]
    sts = one(docs, "StatefulSet", "-aggregator")
    if not agg["enabled"]:
        check(sts is None and not by_kind(docs, "StatefulSet"), f"{where}: servers rendered in an agent-only install")
        return
    n = agg["replicas"]
    quorum = n // 2 + 1
    pdb = one(docs, "PodDisruptionBudget", "-aggregator")
    check(sts is not None and sts["spec"]["replicas"] == n, f"{where}: aggregator replicas != {n}")
    check(pdb is not None and pdb["spec"].get("minAvailable") == quorum, f"{where}: aggregator PDB minAvailable != quorum {quorum}")
    check(sts["spec"]["podManagementPolicy"] == "Parallel", f"{where}: aggregators must start in parallel to elect")
    headless = one(docs, "Service", "-aggregator-headless")
    check(
        headless is not None
        and headless["spec"]["clusterIP"] == "None"
        and headless["spec"].get("publishNotReadyAddresses") is True
        and sts["spec"]["serviceName"] == headless["metadata"]["name"],
        f"{where}: aggregator peers need a headless Service publishing not-ready pods",
    )
    c = containers(sts)[0]
    peers = next(a for a in args_of(c) if re.fullmatch(r"\d+=.*", a))
    ids = [int(p.split("=")[0]) for p in peers.split(",")]
    check(ids == list(range(1, n + 1)), f"{where}: peers {ids} are not 1..{n}")
    for i, p in enumerate(peers.split(",")):
        host = f"{RELEASE}-aggregator-{i}.{RELEASE}-aggregator-headless.{NAMESPACE}.svc.cluster.local:{agg['grpcPort']}"
        check(p == f"{i + 1}={host}", f"{where}: peer {p} is not the stable name {host}")
    founding = agg.get("foundingMembers") or n
    for ordinal in range(n):
        argv = run_aggregator_shell(c["args"][0], f"{RELEASE}-aggregator-{ordinal}")
        check(
            argv[argv.index("--id") + 1] == str(ordinal + 1),
            f"{where}: pod {ordinal} does not get Raft id {ordinal + 1}: {argv}",
        )
        check(("--join" in argv) == (ordinal >= founding), f"{where}: pod {ordinal} --join is wrong: {argv}")
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    check("requiredDuringSchedulingIgnoredDuringExecution" in anti, f"{where}: aggregators are not spread across nodes")
    probes = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("readinessProbe", "livenessProbe")}
    check(probes == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}, f"{where}: aggregator probes {probes}")
    col = one(docs, "StatefulSet", "-collector")
    if values["collector"]["enabled"]:
        cc = containers(col)[0]
        check(cc["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{where}: collector readiness is not /readyz")
        aggs = next(a for a in cc["args"] if a.startswith("--aggregators=")).split("=", 1)[1].split(",")
        check(len(aggs) == n, f"{where}: collector knows {len(aggs)} aggregators, expected {n}")
        check(col["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30, f"{where}: collector grace too short to flush")
        check(one(docs, "PodDisruptionBudget", "-collector") is not None, f"{where}: collector PDB missing")
        check(any(t["metadata"]["name"] == "data" for t in col["spec"]["volumeClaimTemplates"]), f"{where}: collector PVC")
    for s in by_kind(docs, "StatefulSet"):
        pod = s["spec"]["template"]["spec"]
        check(pod["securityContext"].get("runAsNonRoot") is True, f"{where}: {s['metadata']['name']} may run as root")
        # Pod Security Standard `restricted`: seccomp and volume types.
        check(
            pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: {s['metadata']['name']} without RuntimeDefault seccomp",
        )
        allowed = {"configMap", "projected", "emptyDir", "secret", "persistentVolumeClaim"}
        for v in pod["volumes"]:
            kinds = set(v) - {"name"}
            check(kinds <= allowed, f"{where}: {s['metadata']['name']} volume {v['name']} {kinds} is not allowed by `restricted`")
        check(pod.get("automountServiceAccountToken") is False, f"{where}: {s['metadata']['name']} mounts a token")
        for ct in pod["containers"]:
            sc = ct["securityContext"]
            check(
                sc.get("readOnlyRootFilesystem") is True
                and sc.get("allowPrivilegeEscalation") is False
                and sc["capabilities"] == {"drop": ["ALL"]},
                f"{where}: {s['metadata']['name']} container is not locked down",
            )
            check("limits" in ct["resources"] and "requests" in ct["resources"], f"{where}: {s['metadata']['name']} resources")


def run_aggregator_shell(script: str, pod: str) -> list[str]:
    """Runs the aggregator's start script as Kubernetes and sh would (`$$` is
    Kubernetes' escape of `$`), with `echo` in place of the binary."""
    script = script.replace("$$", "$").replace("exec /usr/local/bin/outflow", "exec echo /usr/local/bin/outflow")
    out = subprocess.run(["sh", "-c", script], env={"POD_NAME": pod, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                         capture_output=True, text=True, check=False)
    check(out.returncode == 0, f"aggregator start script fails in sh: {out.stderr}")
    return out.stdout.split()


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching as rustls/webpki does it: a wildcard only as the
    whole left-most label, matching exactly one label."""
    p, h = pattern.lower().split("."), host.lower().split(".")
    if len(p) != len(h):
        return False
    if p[0] == "*":
        return h[0] != "" and p[1:] == h[1:]
    return p == h


def tls_names_used(docs: list[dict], values: dict) -> dict[str, list[str]]:
    """The server names each component's certificate is checked against by
    the binaries: peers' hosts, the collectors' --aggregator-server-name,
    the agents' collector endpoint and every collector's advertised host."""
    names: dict[str, list[str]] = {"aggregator": [], "collector": []}
    agg = one(docs, "StatefulSet", "-aggregator")
    if agg is not None:
        c = containers(agg)[0]
        peers = next(a for a in args_of(c) if re.fullmatch(r"\d+=.*", a))
        names["aggregator"] += [p.split("=", 1)[1].rsplit(":", 1)[0] for p in peers.split(",")]
    col = one(docs, "StatefulSet", "-collector")
    if col is not None:
        args = containers(col)[0]["args"]
        names["aggregator"].append(next(a for a in args if a.startswith("--aggregator-server-name=")).split("=", 1)[1])
        adv = next(a for a in args if a.startswith("--advertise=")).split("=", 1)[1]
        for i in range(col["spec"]["replicas"]):
            host = adv.replace("$(POD_NAME)", f"{col['metadata']['name']}-{i}").split("//", 1)[1].rsplit(":", 1)[0]
            names["collector"].append(host)
        for ds in by_kind(docs, "DaemonSet"):
            ep = next(a for a in containers(ds)[0]["args"] if a.startswith("--collector=")).split("=", 1)[1]
            names["collector"].append(ep.split("//", 1)[1].rsplit(":", 1)[0])
    return names


def check_tls(docs: list[dict], values: dict, where: str) -> None:
    certs = {d["spec"]["secretName"]: d for d in by_kind(docs, "Certificate")}
    cm = values["tls"]["certManager"]["enabled"]
    check(bool(certs) == cm, f"{where}: Certificates rendered = {bool(certs)}, cert-manager enabled = {cm}")
    for s in by_kind(docs, "StatefulSet"):
        comp = s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        vol = next(v for v in s["spec"]["template"]["spec"]["volumes"] if v["name"] == "certs")
        secret = vol["projected"]["sources"][0]["secret"]["name"]
        if not cm:
            check(secret == values["tls"]["secrets"][comp], f"{where}: {comp} does not use the pre-created Secret")
            continue
        cert = certs.get(secret)
        if not check(cert is not None, f"{where}: {comp} mounts {secret}, which no Certificate issues"):
            continue
        spec = cert["spec"]
        check(spec["uris"] == [f"urn:outflow:{comp}:{spec['commonName']}"], f"{where}: {comp} identity URI {spec['uris']}")
        check({"server auth", "client auth"} <= set(spec["usages"]), f"{where}: {comp} certificate usages")
        check(spec["privateKey"]["encoding"] == "PKCS8", f"{where}: {comp} key encoding")
        headless = f"*.{RELEASE}-{comp}-headless.{NAMESPACE}.svc.cluster.local"
        check(headless in spec["dnsNames"], f"{where}: {comp} certificate lacks {headless}")
        for host in tls_names_used(docs, values)[comp]:
            check(
                any(name_matches(p, host) for p in spec["dnsNames"]),
                f"{where}: {comp} certificate does not cover the name {host} the binaries check",
            )
        if comp == "aggregator":
            args = containers(one(docs, "StatefulSet", "-collector"))[0]["args"] if values["collector"]["enabled"] else []
            name = f"--aggregator-server-name={RELEASE}-aggregator"
            check(not args or (name in args and f"{RELEASE}-aggregator" in spec["dnsNames"]), f"{where}: collectors check a name the aggregator certificate lacks")


def check_network(docs: list[dict], values: dict, where: str) -> None:
    pols = {d["metadata"]["name"]: d for d in by_kind(docs, "NetworkPolicy")}
    if not values["networkPolicy"]["enabled"]:
        check(not pols, f"{where}: NetworkPolicies rendered though disabled")
        return
    if not values["aggregator"]["enabled"]:
        return

    def ports(rules):
        return sorted({p["port"] for r in rules for p in r.get("ports", [])})

    agg = pols[f"{RELEASE}-aggregator"]["spec"]
    col = pols[f"{RELEASE}-collector"]["spec"]
    a, c = values["aggregator"], values["collector"]
    check(agg["policyTypes"] == ["Ingress", "Egress"], f"{where}: aggregator policy types")
    check(ports(agg["ingress"]) == sorted([a["grpcPort"], a["apiPort"]]), f"{where}: aggregator ingress ports {ports(agg['ingress'])}")
    check(ports(agg["egress"]) == sorted([a["grpcPort"], 53]), f"{where}: aggregator egress ports {ports(agg['egress'])}")
    check(ports(col["ingress"]) == sorted([c["grpcPort"], c["apiPort"]]), f"{where}: collector ingress ports {ports(col['ingress'])}")
    otlp = values["otlp"]["endpoint"]
    want = sorted({a["grpcPort"], 53} | ({int(re.search(r":(\d+)", otlp.split("//", 1)[1]).group(1))} if otlp else set()))
    check(ports(col["egress"]) == want, f"{where}: collector egress ports {ports(col['egress'])}, expected {want}")


def check_misc(docs: list[dict], notes: str, values: dict, where: str) -> None:
    rbac = [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    check(not rbac, f"{where}: RBAC rendered, but Outflow never calls the API")
    for sa in by_kind(docs, "ServiceAccount"):
        check(sa.get("automountServiceAccountToken") is False, f"{where}: {sa['metadata']['name']} automounts a token")
    if values["aggregator"]["enabled"]:
        check("outflow ctl --api" in notes and " cluster" in notes, f"{where}: NOTES.txt does not say how to check the cluster")
    check(bool(by_kind(docs, "ServiceMonitor")) == (values["serviceMonitor"]["enabled"] and values["aggregator"]["enabled"]), f"{where}: ServiceMonitor")
    check(bool(by_kind(docs, "Ingress")) == (values["adminApi"]["ingress"]["enabled"] and values["aggregator"]["enabled"]), f"{where}: Ingress")
    for w in docs:
        if w["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        for c in containers(w):
            env = {e["name"] for e in c.get("env", [])}
            for arg in c.get("command", []) + c.get("args", []):
                # Kubernetes expands $(VAR) only for variables of the container
                # ($$ escapes); anything else would reach the binary verbatim.
                for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    check(var in env, f"{where}: {w['metadata']['name']} uses $({var}), which is not in its env")
    for cm in by_kind(docs, "ConfigMap"):
        for key, text in cm["data"].items():
            check(not re.search(r"\d\.\d+e[+-]\d", text), f"{where}: {cm['metadata']['name']}/{key} writes a number in e-notation")


def check_values_documented() -> None:
    """Every key of values.yaml has a comment line right above it, except the
    contents of `resources` maps and of list items (documented as a whole)."""
    stack: list[tuple[int, str]] = []
    for no, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        m = re.match(r"^(\s*)(- )?([A-Za-z_][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_free = any(k in ("resources",) or k.startswith("- ") for _, k in stack) or m.group(2)
        stack.append((indent, (m.group(2) or "") + m.group(3)))
        if in_free:
            continue
        prev = no - 2
        lines = (CHART / "values.yaml").read_text().splitlines()
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        check(prev >= 0 and lines[prev].strip().startswith("#"), f"values.yaml:{no}: `{m.group(3)}` is not documented")


# --------------------------------------------------------------------------
# For tests/tests/helm_chart.rs: each container's configuration file and
# command line as the pod would run them, parsed there by the binaries' own
# config code (deny_unknown_fields, types, validate()).


def dump_invocations(docs: list[dict], variant: str, out_dir: Path, founding: int) -> int:
    written = 0
    tomls = {}
    for cm in by_kind(docs, "ConfigMap"):
        for key, text in cm["data"].items():
            tomls[key] = text
    for d in docs:
        if d["kind"] not in ("StatefulSet", "DaemonSet"):
            continue
        comp = d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        c = containers(d)[0]
        runs = []
        if comp == "aggregator":
            for i in range(d["spec"]["replicas"]):
                argv = run_aggregator_shell(c["args"][0], f"{d['metadata']['name']}-{i}")
                expect = {"pod": f"{d['metadata']['name']}-{i}", "raft_id": i + 1, "replicas": d["spec"]["replicas"]}
                runs.append((expect | {"join": i >= founding}, argv[1:]))
        elif comp == "collector":
            pod = f"{d['metadata']['name']}-0"
            argv = [a.replace("$(POD_NAME)", pod) for a in c["args"]]
            aggs = one(docs, "StatefulSet", "-aggregator")["spec"]["replicas"]
            runs.append(({"pod": pod, "aggregators": aggs}, argv))
        else:
            node = d["metadata"].get("annotations", {}).get("outflow.dev/node", "node-x")
            argv = [a.replace("$(NODE_NAME)", node) for a in c["args"]]
            runs.append(({"node": node}, argv))
        for expect, argv in runs:
            written += 1
            (out_dir / f"{variant}-{written:03}.json").write_text(
                json.dumps({"variant": variant, "component": comp, "toml": tomls[f"{comp}.toml"], "argv": argv, "expect": expect})
            )
    return written


# --------------------------------------------------------------------------
# Negative checks: the tools and the schema do catch mistakes.


def check_rejections(chart) -> None:
    wrong_types = [
        ({"aggregator": {"replicas": "three"}}, "/aggregator/replicas"),
        ({"aggregator": {"replicas": 4}}, "/aggregator/replicas"),
        ({"collector": {"config": {"max_message_bytes": "4MiB"}}}, "max_message_bytes"),
        ({"agent": {"config": {"capture": "yes"}}}, "capture"),
        ({"agent": {"config": {"cpu_limit_percent": "5%"}}}, "cpu_limit_percent"),
        ({"agent": {"identity": {"nodes": "node-a"}}}, "nodes"),
        ({"collector": {"grpcPort": 70000}}, "grpcPort"),
        ({"colector": {"replicas": 2}}, "colector"),
    ]
    for vals, needle in wrong_types:
        try:
            chart.validate_schema(vals)
            check(False, f"values.schema.json accepted {vals}")
        except helm.HelmError as e:
            check(needle in str(e), f"schema rejected {vals} without naming {needle}: {e}")
    bad_combos = [
        ({"aggregator": {"enabled": False}, "agent": {"enabled": False}}, "collector.enabled needs aggregator.enabled"),
        ({"aggregator": {"enabled": False}, "collector": {"enabled": False}}, "agent.collectorEndpoint is required"),
        ({"agent": {"identity": {"source": "perNode"}}}, "needs agent.identity.nodes"),
        ({"tls": {"certManager": {"enabled": True, "createCA": False}}}, "issuerRef.name is required"),
    ]
    for vals, needle in bad_combos:
        try:
            chart.render(vals, name=RELEASE, namespace=NAMESPACE)
            check(False, f"chart rendered an unusable combination {vals}")
        except helm.HelmError as e:
            check(needle in str(e), f"render of {vals} failed without saying `{needle}`: {e}")
    # The validator itself must refuse unknown fields (strict mode).
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    try:
        kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
        check(False, "kubernetes-validate accepted an unknown field")
    except kubernetes_validate.ValidationError:
        check(True, "strict")


# --------------------------------------------------------------------------
# Dockerfiles


def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").strip("/")))
    return out


def ignored(path: str, patterns) -> bool:
    verdict = False
    for negate, pat in patterns:
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
            verdict = not negate
    return verdict


def check_dockerfiles() -> None:
    patterns = dockerignore_patterns()
    check(ignored("target/debug/outflow", patterns), ".dockerignore must exclude target/")
    bins = {"outflow": ROOT / "cli" / "Cargo.toml", "outflow-agent": ROOT / "agent" / "Cargo.toml"}
    for df in sorted((ROOT / "docker").glob("*.Dockerfile")):
        text = df.read_text()
        stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M | re.I)
        check(len(stages) >= 2, f"{df.name}: not multi-stage")
        for line in re.findall(r"^COPY\s+(.*)$", text, re.M):
            parts = [p for p in line.split() if not p.startswith("--")]
            if "--from" in line:
                continue
            for src in parts[:-1]:
                if src == ".":
                    continue
                check((ROOT / src).exists(), f"{df.name}: COPY source {src} does not exist")
                check(not ignored(src, patterns), f"{df.name}: COPY source {src} is excluded by .dockerignore")
        for b in re.findall(r"--bin\s+(\S+)", text):
            check(
                b in bins and f'name = "{b}"' in bins[b].read_text(),
                f"{df.name}: cargo --bin {b} is not a binary of the workspace",
            )
        final = text[text.rfind("\nFROM") :]
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        if "agent" not in df.name:
            check(bool(user) and not user[-1].startswith(("0", "root")), f"{df.name}: the server image must run as non-root")
        check("ENTRYPOINT" in final, f"{df.name}: no ENTRYPOINT in the final stage")


# --------------------------------------------------------------------------


def main() -> int:
    t0 = time.monotonic()
    chart = helm.Chart.load(str(CHART))
    defaults = chart.values
    caps_doc = documented_capabilities()
    check(
        caps_doc == {"NET_ADMIN", "NET_RAW", "SYS_PTRACE", "DAC_READ_SEARCH"},
        f"documented agent capabilities changed: {sorted(caps_doc)} (update the chart and this test together)",
    )
    variants = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
    check(
        {"defaults.yaml", "cert-manager.yaml", "aggregators-5.yaml", "agent-only.yaml"} <= set(variants),
        f"values variants missing: {variants}",
    )
    all_seen: dict[str, set[str]] = {"collector": set(), "aggregator": set(), "agent": set()}
    for name in variants:
        over = load_values(name)
        values = deep_merge(defaults, over)
        try:
            chart.validate_schema(over)
        except helm.HelmError as e:
            check(False, f"{name}: schema: {e}")
        lint = helm.lint(str(CHART), over, strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}")
        problems = [m for m in lint["messages"] if m.get("severity", 0) >= 2] + lint.get("errors", [])
        check(not problems, f"{name}: helm lint: {problems}")
        try:
            docs, notes = render(chart, over)
        except helm.HelmError as e:
            check(False, f"{name}: render failed: {e}")
            continue
        kinds = sorted({d["kind"] for d in docs})
        for d in docs:
            validate_manifest(d, name)
        check_servers(docs, values, name)
        check_agent(docs, values, name, caps_doc)
        check_tls(docs, values, name)
        check_network(docs, values, name)
        check_misc(docs, notes, values, name)
        for k, v in evidence(docs).items():
            all_seen[k] |= v
        if DUMP:
            dumped = dump_invocations(docs, Path(name).stem, DUMP, values["aggregator"].get("foundingMembers") or values["aggregator"]["replicas"])
            check(dumped > 0 or not docs, f"{name}: nothing to dump")
        print(f"  {name}: {len(docs)} manifests ({', '.join(kinds)})")
    # Growing a 3-member group to 5: the two new pods must join, not found.
    grow = {"aggregator": {"replicas": 5, "foundingMembers": 3}}
    docs, _ = render(chart, grow)
    check_servers(docs, deep_merge(defaults, grow), "grow-3-to-5")
    if DUMP:
        dump_invocations(docs, "grow-3-to-5", DUMP, 3)
    check_config_keys(defaults, all_seen)
    check_values_documented()
    check_rejections(chart)
    check_dockerfiles()
    dt = time.monotonic() - t0
    if FAILURES:
        print(f"FAILED: {len(FAILURES)} of {CHECKS} checks ({dt:.1f} s):")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    print(f"OK: {CHECKS} checks over {len(variants)} values files, Kubernetes {K8S_VERSION} ({dt:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
