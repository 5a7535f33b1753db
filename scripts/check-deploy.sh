#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a cluster (CI has neither). It runs:
#
#  1. Kubernetes: every manifest under deploy/kubernetes/, and the rendered base and tls/ overlay, validated
#     against the Kubernetes JSON schemas (strict: unknown fields are errors) with kubernetes-validate from
#     PyPI, pinned. The schemas ship inside the wheel, so validation needs no network. Then it checks what a
#     schema can't: the probes, the drain timings, the security contexts, selectors, ports and the setting
#     names.
#  2. docker-compose.yml and .env.example, parsed with PyYAML: the postgres and authd services, the named
#     volume, the healthchecks, depends_on with service_healthy, ports on 127.0.0.1 only, and every
#     environment variable name.
#  3. Dockerfile: multi-stage, a numeric non-root USER, HEALTHCHECK with `authd healthcheck` (exec form on a
#     shell-less runtime), EXPOSE 50051 and 9090.
#
# Setting names: every name used in compose, .env.example, the ConfigMap, the Secrets loaded with envFrom,
# container env and the Dockerfile's ENV must be an authd option. The options are the `env = "..."`
# attributes in src/config/mod.rs and the rows of the README's "## Configuration" table. Both lists must agree:
# a README row with no option is an error, and so is an option without a README row. The second rule can be
# turned into a warning with --skip-readme-completeness.
#
# With --authd PATH (a built authd binary), every set of settings (the Dockerfile's ENV, compose's authd
# service, .env.example including its commented-out examples, and each Kubernetes container's environment
# with the example Secrets) is also handed to `PATH healthcheck --addr 127.0.0.1:1`, which parses all of
# authd's options: a value authd would refuse (a bad duration, an empty list) fails the check. Without
# --authd only the names are checked.
#
# Usage: scripts/check-deploy.sh [--skip-readme-completeness] [--authd PATH]   (PATH relative to the repo root)
# Environment: CHECK_DEPLOY_KUBE_VERSIONS (default "1.30.0 1.37.0"): Kubernetes versions to validate against.
#              CHECK_DEPLOY_VENV (default .ci/cache/check-deploy-venv): where the pinned tools are installed.
# Exits non-zero on any problem. Needs python3 with venv, and PyPI for the first run; kubectl is optional
# (`kubectl kustomize` renders the overlays when present; a built-in renderer otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

rest=("$@")
while [ "${#rest[@]}" -gt 0 ]; do
  arg="${rest[0]}"
  rest=("${rest[@]:1}")
  case "$arg" in
    --skip-readme-completeness) ;;
    --authd)
      if [ "${#rest[@]}" -eq 0 ] || [ ! -x "${rest[0]}" ]; then
        echo "check-deploy: --authd needs the path of an executable authd binary" >&2
        exit 2
      fi
      rest=("${rest[@]:1}")
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "check-deploy: unknown argument $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

# The validator and every package it imports, pinned, installed with --no-deps. The wheel of
# kubernetes-validate 1.37.0 carries the JSON schemas of Kubernetes 1.25 to 1.37.
PINS=(
  kubernetes-validate==1.37.0
  PyYAML==6.0.3
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
  attrs==26.1.0
  importlib_resources==7.1.0
  packaging==26.3
  typing_extensions==4.16.0
)

venv="${CHECK_DEPLOY_VENV:-.ci/cache/check-deploy-venv}"
stamp="$venv/.check-deploy-pins"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PINS[*]}" ]; then
  echo "check-deploy: installing ${PINS[0]} and its pinned dependencies into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: "${PINS[@]}"
  "$venv/bin/python" -m pip check --disable-pip-version-check
  echo "${PINS[*]}" >"$stamp"
fi

export CHECK_DEPLOY_KUBE_VERSIONS="${CHECK_DEPLOY_KUBE_VERSIONS:-1.30.0 1.37.0}"
exec "$venv/bin/python" - "$@" <<'PY'
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time

import yaml
import kubernetes_validate

T0 = time.monotonic()
SKIP_README = "--skip-readme-completeness" in sys.argv[1:]
AUTHD_BIN = sys.argv[sys.argv.index("--authd") + 1] if "--authd" in sys.argv[1:] else None
# (where, {name: value}): every set of settings that some deployment hands authd; see --authd.
ENV_SETS = []
KUBE_VERSIONS = os.environ["CHECK_DEPLOY_KUBE_VERSIONS"].split()
K8S_DIR = "deploy/kubernetes"
# API groups of CRDs: no schema in the validator; checked by hand below.
CRD_GROUPS = {"monitoring.coreos.com", "cert-manager.io"}

problems = []
warnings = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def warn(where, msg):
    warnings.append(f"{where}: {msg}")


# ---------------------------------------------------------------- YAML that refuses duplicate keys
class StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        fail(path, f"cannot parse: {e}")
        return None


# ---------------------------------------------------------------- durations (authd's and Go's)
def parse_duration(s, where):
    s = str(s).strip()
    if s == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        fail(where, f"cannot read the duration {s!r}")
        return None
    mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * mult[u] for n, u in parts)


def port_of(addr, where):
    m = re.fullmatch(r"(?:\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d+)", str(addr).strip())
    if not m:
        fail(where, f"{addr!r} is not HOST:PORT")
        return None
    return int(m.group(1))


def host_of(addr):
    return str(addr).strip().rsplit(":", 1)[0]


# ---------------------------------------------------------------- the known options
def config_rs_options(path="src/config/mod.rs"):
    """env name -> default value (a string) or None, from the clap attributes."""
    try:
        src = open(path).read()
    except OSError as e:
        fail(path, f"cannot read: {e}")
        return {}
    opts = {}
    for m in re.finditer(r"#\[arg\((.*?)\)\]\s*pub\s+\w+", src, re.S):
        attr = m.group(1)
        env = re.search(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', attr)
        if not env:
            continue
        default = re.search(r'\bdefault_value\s*=\s*"([^"]*)"', attr) or \
            re.search(r"\bdefault_value_t\s*=\s*([^,\s]+)", attr)
        opts[env.group(1)] = default.group(1) if default else None
    if not opts:
        fail(path, 'found no `env = "..."` attributes')
    return opts


def readme_options(path="README.md"):
    try:
        text = open(path).read()
    except OSError as e:
        fail(path, f"cannot read: {e}")
        return set()
    m = re.search(r"^## Configuration[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        fail(path, 'has no "## Configuration" section')
        return set()
    names = re.findall(r"^\|\s*`(AUTHD_[A-Z0-9_]+|DATABASE_URL)`\s*\|", m.group(1), re.M)
    if not names:
        fail(path, "the configuration table has no `AUTHD_...` rows")
    return set(names)


CONFIG = config_rs_options()
README = readme_options()
KNOWN = set(CONFIG) | README
for name in sorted(README - set(CONFIG)):
    fail("README.md", f"the configuration table lists {name}, which src/config/mod.rs does not define")
for name in sorted(set(CONFIG) - README):
    msg = f"{name} (src/config/mod.rs) has no row in the configuration table"
    if SKIP_README:
        warn("README.md", msg + " (--skip-readme-completeness)")
    else:
        fail("README.md", msg)


def check_names(names, where):
    for name in names:
        if name not in KNOWN:
            fail(where, f"{name} is not an authd option (not in src/config/mod.rs nor the README's configuration table)")


def effective(env, name):
    """A setting's value from env, else its default in src/config/mod.rs."""
    return env.get(name, CONFIG.get(name))


def drain_seconds(env, where):
    delay = parse_duration(effective(env, "AUTHD_SHUTDOWN_DELAY") or "5s", where)
    grace = parse_duration(effective(env, "AUTHD_SHUTDOWN_GRACE") or "30s", where)
    if delay is None or grace is None:
        return None
    return delay + grace


# ================================================================ 1. Kubernetes
def yaml_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith((".yaml", ".yml"))]
    return out


def is_kustomization(path):
    return os.path.basename(path) in ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomization_file(d):
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.isfile(os.path.join(d, n)):
            return os.path.join(d, n)
    return None


KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}


def kustomize_fallback(d, seen=None):
    """A small kustomize for what these overlays use: resources (files and directories), RFC 6902 patches
    with a target, and images. Anything else is refused, so it can't silently render something else."""
    seen = seen or set()
    d = os.path.normpath(d)
    if d in seen:
        raise ValueError(f"{d}: resource cycle")
    seen = seen | {d}
    kf = kustomization_file(d)
    if not kf:
        raise ValueError(f"{d}: no kustomization.yaml")
    with open(kf) as f:
        k = yaml.load(f, Loader=StrictLoader) or {}
    unknown = set(k) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"{kf}: the built-in renderer does not support {sorted(unknown)}; install kubectl")
    objs = []
    for r in k.get("resources", []):
        p = os.path.join(d, r)
        if os.path.isdir(p):
            objs += kustomize_fallback(p, seen)
        else:
            with open(p) as f:
                objs += [o for o in yaml.load_all(f, Loader=StrictLoader) if o]
    for patch in k.get("patches", []):
        if set(patch) - {"path", "target"} or set(patch.get("target", {})) - {"group", "version", "kind", "name"}:
            raise ValueError(f"{kf}: the built-in renderer supports only patches with path and target")
        with open(os.path.join(d, patch["path"])) as f:
            ops = yaml.load(f, Loader=StrictLoader)
        if not isinstance(ops, list):
            raise ValueError(f"{kf}: {patch['path']}: the built-in renderer supports only RFC 6902 patches")
        t = patch["target"]
        hits = [o for o in objs
                if o.get("kind") == t.get("kind", o.get("kind"))
                and o.get("metadata", {}).get("name") == t.get("name", o.get("metadata", {}).get("name"))
                and o.get("apiVersion", "").split("/")[0] == t.get("group", o.get("apiVersion", "").split("/")[0])]
        if not hits:
            raise ValueError(f"{kf}: patch {patch['path']} matches no resource")
        for o in hits:
            json_patch(o, ops, f"{d}/{patch['path']}")
    for img in k.get("images", []):
        for o in objs:
            for c in pod_containers(o):
                ref = c.get("image", "")
                name = re.sub(r"(@sha256:[0-9a-f]+|:[^/:]+)$", "", ref)
                if name == img["name"]:
                    new = img.get("newName", name)
                    if "digest" in img:
                        new += "@" + img["digest"]
                    elif "newTag" in img:
                        new += ":" + str(img["newTag"])
                    else:
                        new = ref.replace(name, img.get("newName", name), 1)
                    c["image"] = new
    return objs


def json_patch(doc, ops, where):
    def walk(path):
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    for op in ops:
        parent, last = walk(op["path"])
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[idx]
            else:
                raise ValueError(f"{where}: op {kind} not supported by the built-in renderer")
        else:
            if kind in ("replace", "remove") and last not in parent:
                raise ValueError(f"{where}: {op['path']} does not exist")
            if kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            else:
                raise ValueError(f"{where}: op {kind} not supported by the built-in renderer")


def canonical(objs):
    return sorted(json.dumps(o, sort_keys=True) for o in objs)


def render(d):
    """The objects of the kustomization in d: with `kubectl kustomize` when it is installed (then the
    built-in renderer must agree with it), else with the built-in renderer."""
    try:
        fallback = kustomize_fallback(d)
    except (OSError, ValueError, KeyError, IndexError, yaml.YAMLError) as e:
        fallback = None
        fallback_error = str(e)
    kubectl = shutil.which("kubectl")
    if kubectl:
        r = subprocess.run([kubectl, "kustomize", d], capture_output=True, text=True)
        if r.returncode != 0:
            fail(d, f"kubectl kustomize failed: {' '.join(r.stderr.split())[:800]}")
            return None
        objs = [o for o in yaml.safe_load_all(r.stdout) if o]
        if fallback is None:
            warn(d, f"built-in renderer: {fallback_error}")
        elif canonical(fallback) != canonical(objs):
            fail(d, "the built-in renderer of scripts/check-deploy.sh disagrees with kubectl kustomize; "
                    "update it, or stay within what it supports")
        return objs
    if fallback is None:
        fail(d, f"cannot render without kubectl: {fallback_error}")
        return None
    warn(d, "kubectl not found: rendered with the built-in renderer")
    return fallback


def pod_spec(o):
    spec = o.get("spec") or {}
    if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}
    if o.get("kind") == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    if o.get("kind") == "Pod":
        return spec
    return None


def pod_containers(o):
    ps = pod_spec(o)
    if not ps:
        return []
    return (ps.get("initContainers") or []) + (ps.get("containers") or [])


def pod_labels(o):
    return ((o.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def selects(selector, labels):
    ml = (selector or {}).get("matchLabels") or {}
    if (selector or {}).get("matchExpressions"):
        return None  # not evaluated here
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def name_of(o):
    return f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}"


# ---- gather files
all_files = yaml_files(K8S_DIR)
if not all_files:
    fail(K8S_DIR, "no manifests found")
kustomizations = [f for f in all_files if is_kustomization(f)]
referenced, patch_files = set(), set()
for kf in kustomizations:
    docs = load_yaml_docs(kf) or [{}]
    k, d = docs[0], os.path.dirname(kf)
    for r in k.get("resources", []) or []:
        p = os.path.normpath(os.path.join(d, r))
        if not os.path.exists(p):
            fail(kf, f"resource {r} does not exist")
        elif os.path.isfile(p):
            referenced.add(p)
    for p in k.get("patches", []) or []:
        if "path" in p:
            patch_files.add(os.path.normpath(os.path.join(d, p["path"])))

file_docs = {}
for f in all_files:
    if is_kustomization(f):
        continue
    docs = load_yaml_docs(f)
    if docs is None:
        continue
    if os.path.normpath(f) in patch_files:
        continue  # validated after rendering
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind") \
                or not (doc.get("metadata") or {}).get("name"):
            fail(f, f"document {i + 1} lacks apiVersion, kind or metadata.name")
    file_docs[os.path.normpath(f)] = [d for d in docs if isinstance(d, dict)]

# ---- render the kustomizations: every directory with one, and the variants that are applied
rendered = {}
for kf in kustomizations:
    d = os.path.dirname(kf)
    objs = render(d)
    if objs is not None:
        rendered[os.path.normpath(d)] = objs

# ---- schema validation of every file and every rendered object
validated = set()
schema_count = 0


def validate(doc, where):
    global schema_count
    key = json.dumps(doc, sort_keys=True)
    if key in validated:
        return
    validated.add(key)
    group = doc.get("apiVersion", "").split("/")[0] if "/" in doc.get("apiVersion", "") else ""
    if group in CRD_GROUPS:
        return  # checked below
    for v in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
            schema_count += 1
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            fail(where, f"{name_of(doc)} is invalid for Kubernetes {e.version}: {path}: {e.message}")
            return
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(where, f"{name_of(doc)}: {e.message}")
            return
        except Exception as e:  # VersionNotSupportedError, unresolvable refs, ...
            fail(where, f"{name_of(doc)}: cannot validate against Kubernetes {v}: {getattr(e, 'message', e)}")
            return


for f, docs in file_docs.items():
    for doc in docs:
        validate(doc, f)
for d, objs in rendered.items():
    for doc in objs:
        validate(doc, f"{d} (rendered)")


# ---- variants: what `kubectl apply -k` installs, plus the loose files applied by hand beside it
def loose_docs(d):
    """Documents of files in d (not below it) that no kustomization includes."""
    out = []
    for f, docs in file_docs.items():
        if os.path.dirname(f) == os.path.normpath(d) and f not in referenced:
            out += [(f, x) for x in docs]
    return out


variants = {}
root = os.path.normpath(K8S_DIR)
if root in rendered:
    variants["plaintext"] = ([(f"{root} (rendered)", o) for o in rendered[root]] + loose_docs(root))
else:
    fail(K8S_DIR, "no kustomization.yaml that renders the plaintext variant")
tls_dir = os.path.join(root, "tls")
if tls_dir in rendered:
    variants["tls"] = ([(f"{tls_dir} (rendered)", o) for o in rendered[tls_dir]]
                       + loose_docs(root) + loose_docs(tls_dir))
else:
    fail(K8S_DIR, "no TLS variant: tls/kustomization.yaml is missing or does not render")


def check_security(o, where):
    ps = pod_spec(o) or {}
    psc = ps.get("securityContext") or {}
    n = name_of(o)
    if ps.get("automountServiceAccountToken") is not False:
        warn(where, f"{n}: automountServiceAccountToken is not false")
    for c in pod_containers(o):
        sc = c.get("securityContext") or {}
        cn = f"{n} container {c.get('name')}"

        def get(k):
            return sc.get(k, psc.get(k))
        if get("runAsNonRoot") is not True:
            fail(where, f"{cn}: runAsNonRoot must be true")
        uid = get("runAsUser")
        if uid is not None and uid == 0:
            fail(where, f"{cn}: runAsUser 0 is root")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(where, f"{cn}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(where, f"{cn}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            fail(where, f"{cn}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(where, f"{cn}: capabilities.drop must include ALL")
        if (sc.get("capabilities") or {}).get("add"):
            fail(where, f"{cn}: adds capabilities")
        if ((get("seccompProfile") or {}).get("type")) not in ("RuntimeDefault", "Localhost"):
            fail(where, f"{cn}: seccompProfile must be RuntimeDefault")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    fail(where, f"{cn}: resources.{kind}.{r} is not set")


def container_env(o, c, objects, where):
    """The container's environment: envFrom ConfigMaps and Secrets (defined in the manifests), then env.
    Checks every name on the way."""
    env = {}
    n = f"{name_of(o)} container {c.get('name')}"
    for src in c.get("envFrom") or []:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key not in src:
                continue
            ref = src[key].get("name")
            if src.get("prefix"):
                fail(where, f"{n}: envFrom {kind} {ref} has a prefix; authd's names have none")
            hits = [x for x in objects if x[1].get("kind") == kind and x[1]["metadata"].get("name") == ref]
            if not hits:
                if src[key].get("optional"):
                    continue
                fail(where, f"{n}: envFrom {kind} {ref} is not defined in {K8S_DIR}")
                continue
            f, obj = hits[0]
            data = dict(obj.get("data") or {})
            data.update(obj.get("stringData") or {})
            check_names(sorted(data), f"{f}: {kind} {ref}")
            env.update({k: str(v) for k, v in data.items()})
    for e in c.get("env") or []:
        check_names([e["name"]], f"{where}: {n} env")
        if "value" in e:
            env[e["name"]] = str(e["value"])
        ref = (e.get("valueFrom") or {})
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in ref:
                r = ref[key]
                hits = [x[1] for x in objects if x[1].get("kind") == kind and x[1]["metadata"].get("name") == r.get("name")]
                if not hits:
                    fail(where, f"{n}: env {e['name']} refers to {kind} {r.get('name')}, which is not defined")
                else:
                    data = {**(hits[0].get("data") or {}), **(hits[0].get("stringData") or {})}
                    if r.get("key") not in data:
                        fail(where, f"{n}: env {e['name']} refers to key {r.get('key')} missing from {kind} {r.get('name')}")
                    else:
                        env[e["name"]] = str(data[r.get("key")])
    return env


def check_variant(label, objects):
    where = f"{K8S_DIR} [{label}]"
    by_kind = {}
    for f, o in objects:
        by_kind.setdefault(o.get("kind"), []).append((f, o))

    # one namespace for everything
    namespaces = [o["metadata"]["name"] for _, o in by_kind.get("Namespace", [])]
    if len(namespaces) != 1:
        fail(where, f"expected one Namespace, found {namespaces}")
    for f, o in objects:
        if o.get("kind") != "Namespace" and namespaces and o["metadata"].get("namespace") != namespaces[0]:
            fail(f, f"{name_of(o)} is not in namespace {namespaces[0]}")

    deployments = [(f, o) for f, o in by_kind.get("Deployment", []) if o["metadata"]["name"] == "authd"]
    if len(deployments) != 1:
        fail(where, "expected one Deployment named authd")
        return
    df, dep = deployments[0]
    spec, ps = dep["spec"], pod_spec(dep)
    labels = pod_labels(dep)
    if (spec.get("replicas") or 1) < 2:
        fail(df, "the Deployment needs 2 or more replicas")
    if not selects(spec.get("selector"), labels):
        fail(df, "the Deployment's selector does not match its pod labels")
    if not ps.get("topologySpreadConstraints") and not (ps.get("affinity") or {}).get("podAntiAffinity"):
        fail(df, "no topologySpreadConstraints or podAntiAffinity: replicas may share one node")
    check_security(dep, df)
    if ps.get("enableServiceLinks") is not False:
        fail(df, "set enableServiceLinks: false. The Service named authd would otherwise inject AUTHD_PORT, "
                 "AUTHD_SERVICE_HOST and the like into the environment, beside authd's own AUTHD_ settings")
    authd = [c for c in ps.get("containers", []) if c.get("name") == "authd"]
    if not authd:
        fail(df, "no container named authd")
        return
    c = authd[0]
    env = container_env(dep, c, objects, df)
    ENV_SETS.append((f"{df}: Deployment authd [{label}]", env))
    for need in ("DATABASE_URL",):
        if need not in env:
            fail(df, f"{need} is not set: the image has no PostgreSQL")

    # drain
    drain = drain_seconds(env, df)
    tgps = ps.get("terminationGracePeriodSeconds", 30)
    if drain is not None and not tgps > drain:
        fail(df, f"terminationGracePeriodSeconds ({tgps}) must exceed AUTHD_SHUTDOWN_DELAY + "
                 f"AUTHD_SHUTDOWN_GRACE ({drain:g}s), or the kubelet kills in-flight calls")

    # listeners, ports and probes
    cports = {p.get("containerPort"): p.get("name") for p in c.get("ports") or []}
    listen = effective(env, "AUTHD_LISTEN") or ""
    lport = port_of(listen, f"{df}: AUTHD_LISTEN")
    if host_of(listen) in ("127.0.0.1", "localhost", "[::1]"):
        fail(df, f"AUTHD_LISTEN={listen} listens on loopback only: nothing outside the pod can reach it")
    if lport is not None and cports.get(lport) != "grpc":
        fail(df, f"the gRPC port {lport} (AUTHD_LISTEN) must be a containerPort named grpc")
    http = env.get("AUTHD_HTTP_LISTEN")
    hport = port_of(http, f"{df}: AUTHD_HTTP_LISTEN") if http else None
    if hport is not None and hport not in cports:
        fail(df, f"the HTTP port {hport} (AUTHD_HTTP_LISTEN) is not a containerPort")
    ann = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true":
        if hport is None:
            fail(df, "prometheus.io/scrape is true but AUTHD_HTTP_LISTEN is unset: there is no /metrics")
        elif str(ann.get("prometheus.io/port")) != str(hport):
            fail(df, f"prometheus.io/port is {ann.get('prometheus.io/port')}, the HTTP listener is on {hport}")
    tls = bool(env.get("AUTHD_TLS_CERT") or env.get("AUTHD_TLS_KEY"))
    health = env.get("AUTHD_HEALTH_LISTEN")
    probe_port = lport
    if health:
        probe_port = port_of(health, f"{df}: AUTHD_HEALTH_LISTEN")
        if probe_port is not None and probe_port not in cports:
            fail(df, f"the health port {probe_port} (AUTHD_HEALTH_LISTEN) is not a containerPort")
        if probe_port == lport:
            fail(df, "AUTHD_HEALTH_LISTEN must differ from AUTHD_LISTEN")
    if tls:
        if not (env.get("AUTHD_TLS_CERT") and env.get("AUTHD_TLS_KEY")):
            fail(df, "TLS needs both AUTHD_TLS_CERT and AUTHD_TLS_KEY")
        if not health:
            fail(df, "TLS is on but AUTHD_HEALTH_LISTEN is unset: the kubelet's gRPC probes can't speak TLS")
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts") or []}
        vols = {v["name"]: v for v in ps.get("volumes") or []}
        for var in ("AUTHD_TLS_CERT", "AUTHD_TLS_KEY", "AUTHD_TLS_CLIENT_CA"):
            path = env.get(var)
            if not path:
                continue
            mount = [mp for mp in mounts if path.startswith(mp + "/")]
            if not mount or "secret" not in vols.get(mounts[mount[0]], {}):
                fail(df, f"{var}={path} is not on a volume mounted from a Secret")
                continue
            vsec = vols[mounts[mount[0]]]["secret"]
            sname, fname = vsec.get("secretName"), path[len(mount[0]) + 1:]
            items = {i["path"]: i["key"] for i in vsec.get("items") or []}
            secrets = [o for _, o in objects if o.get("kind") == "Secret" and o["metadata"].get("name") == sname]
            if not secrets:
                fail(df, f"{var}: the Secret {sname} is not defined (not even as an example) in {K8S_DIR}")
            elif items.get(fname, fname) not in {**(secrets[0].get("data") or {}), **(secrets[0].get("stringData") or {})}:
                fail(df, f"{var}={path}: the Secret {sname} has no key {items.get(fname, fname)}")
    elif label == "tls":
        fail(df, "the TLS variant does not set AUTHD_TLS_CERT and AUTHD_TLS_KEY")
    probes = {"startupProbe": "liveness", "livenessProbe": "liveness", "readinessProbe": ""}
    for probe, service in probes.items():
        p = c.get(probe)
        if not p:
            fail(df, f"no {probe}")
            continue
        g = p.get("grpc")
        if not g:
            fail(df, f"{probe} is not a native grpc probe")
            continue
        if g.get("port") != probe_port:
            fail(df, f"{probe} probes port {g.get('port')}, but grpc.health.v1 in plaintext is on {probe_port}"
                     + (" (AUTHD_HEALTH_LISTEN)" if health else " (AUTHD_LISTEN)"))
        if (g.get("service") or "") != service:
            fail(df, f"{probe} asks service {g.get('service')!r}, expected {service!r}")

    # Service
    services = by_kind.get("Service", [])
    main = [(f, s) for f, s in services if s["metadata"]["name"] == "authd"]
    if not main:
        fail(where, "no Service named authd")
    names = {n: p for p, n in cports.items()}
    for f, s in services:
        if not selects({"matchLabels": s["spec"].get("selector")}, labels):
            fail(f, f"{name_of(s)} does not select the authd pods")
        for p in s["spec"].get("ports", []):
            t = p.get("targetPort", p.get("port"))
            if (isinstance(t, str) and t not in names) or (isinstance(t, int) and t not in cports):
                fail(f, f"{name_of(s)} port {p.get('name')} targets {t}, which the pods don't expose")
    for f, s in main:
        grpc = [p for p in s["spec"].get("ports", []) if p.get("name") == "grpc"]
        if not grpc or grpc[0].get("appProtocol") != "grpc":
            fail(f, "Service authd needs a port named grpc with appProtocol: grpc")

    # HPA
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if not hpas:
        fail(where, "no HorizontalPodAutoscaler")
    for f, h in hpas:
        if h.get("apiVersion") != "autoscaling/v2":
            fail(f, "use autoscaling/v2")
        ref = h["spec"].get("scaleTargetRef", {})
        if (ref.get("kind"), ref.get("name")) != ("Deployment", "authd"):
            fail(f, "the HPA does not target Deployment authd")
        if h["spec"].get("minReplicas", 1) < 2:
            fail(f, "minReplicas below 2 undoes the Deployment's replicas")

    # PDB
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not pdbs:
        fail(where, "no PodDisruptionBudget")
    for f, p in pdbs:
        if not selects(p["spec"].get("selector"), labels):
            fail(f, "the PodDisruptionBudget does not select the authd pods")

    # NetworkPolicy
    nps = by_kind.get("NetworkPolicy", [])
    if not nps:
        fail(where, "no NetworkPolicy")
    for f, n in nps:
        if not selects(n["spec"].get("podSelector"), labels):
            fail(f, "the NetworkPolicy does not select the authd pods")
        if "Ingress" not in (n["spec"].get("policyTypes") or []):
            fail(f, "the NetworkPolicy does not restrict Ingress")
        for i, rule in enumerate(n["spec"].get("ingress") or []):
            if not rule.get("from"):
                fail(f, f"ingress rule {i + 1} admits every source")
            if not rule.get("ports"):
                fail(f, f"ingress rule {i + 1} admits every port")
            for p in rule.get("ports") or []:
                port = p.get("port")
                if (isinstance(port, int) and port not in cports) or (isinstance(port, str) and port not in names):
                    fail(f, f"ingress rule {i + 1} opens port {port}, which the pods don't expose")
        labelled = any(
            (peer.get("podSelector") or {}).get("matchLabels")
            for rule in n["spec"].get("ingress") or [] for peer in rule.get("from") or [])
        if not labelled:
            fail(f, "no ingress rule is limited to labelled pods")

    # Jobs (the migration)
    for f, j in by_kind.get("Job", []):
        check_security(j, f)
        for jc in pod_containers(j):
            ENV_SETS.append((f"{f}: {name_of(j)} container {jc.get('name')}", container_env(j, jc, objects, f)))
    if not any("migrate" in (jc.get("args") or []) + (jc.get("command") or [])
               for _, j in by_kind.get("Job", []) for jc in pod_containers(j)):
        fail(where, "no Job runs `authd migrate`")

    # ServiceMonitor (CRD: no schema; its shape is checked here)
    for f, sm in by_kind.get("ServiceMonitor", []):
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(f, "ServiceMonitor should be monitoring.coreos.com/v1")
        sel = (sm.get("spec") or {}).get("selector")
        targets = [s for _, s in services if selects(sel, s["metadata"].get("labels") or {})]
        if not targets:
            fail(f, "the ServiceMonitor selects no Service")
        ports = {p.get("name") for s in targets for p in s["spec"].get("ports", [])}
        for ep in (sm.get("spec") or {}).get("endpoints") or []:
            if ep.get("port") not in ports:
                fail(f, f"ServiceMonitor endpoint port {ep.get('port')!r} is not a port of the Service")
            if ep.get("port") and hport and names.get(ep.get("port")) not in (None, hport):
                fail(f, "the ServiceMonitor scrapes a port that is not the HTTP listener")
    return


def guarded(where, fn, *args):
    """Runs one group of checks; malformed input that trips it is a problem, not a crash."""
    try:
        fn(*args)
    except Exception as e:
        fail(where, f"could not be checked ({type(e).__name__}: {e}); fix the errors above first")


for label, objects in variants.items():
    guarded(f"{K8S_DIR} [{label}]", check_variant, label, objects)

# ================================================================ 2. docker-compose.yml and .env.example
def env_file_names(path, where):
    """Names on NAME=value lines, and on commented-out `# NAME=value` lines too."""
    names, active = [], []
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        fail(where, f"cannot read {path}: {e}")
        return names, {}
    values, commented = {}, {}
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        m = re.match(r"^(#\s*)?(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", s)
        if not m:
            if not s.startswith("#"):
                fail(f"{path}:{i}", f"not a NAME=value line: {s!r}")
            continue
        name = m.group(2)
        names.append(name)
        if not m.group(1):
            if name in values:
                fail(f"{path}:{i}", f"{name} is set twice")
            values[name] = m.group(3)
        else:
            commented[name] = m.group(3)
    if commented:
        ENV_SETS.append((f"{path} (with its commented-out examples)", {**values, **commented}))
    return names, values


def interpolate(v):
    """Compose's ${VAR:-default}, ${VAR-default} and ${VAR}, with VAR unset: the default, or empty."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", v)


def check_compose():
    names, env_example = env_file_names(".env.example", ".env.example")
    check_names(names, ".env.example")

    compose_docs = load_yaml_docs("docker-compose.yml")
    compose = (compose_docs or [{}])[0]
    services = (compose or {}).get("services") or {}
    for s in ("postgres", "authd"):
        if s not in services:
            fail("docker-compose.yml", f"no service {s}")
    pg, ad = services.get("postgres") or {}, services.get("authd") or {}
    named_volumes = set((compose or {}).get("volumes") or {})
    pg_named = []
    for v in pg.get("volumes") or []:
        src = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
        if isinstance(v, dict) and v.get("type", "volume") != "volume":
            continue
        if src in named_volumes:
            pg_named.append(src)
    if pg and not pg_named:
        fail("docker-compose.yml", "postgres has no named volume (declared under the top-level volumes:)")
    if pg:
        test = (pg.get("healthcheck") or {}).get("test")
        if not test or "pg_isready" not in " ".join(test if isinstance(test, list) else [test]):
            fail("docker-compose.yml", "postgres needs a healthcheck with pg_isready")
    if ad:
        if "build" not in ad:
            fail("docker-compose.yml", "authd is not built from the Dockerfile (build:)")
        dep = ad.get("depends_on")
        if not isinstance(dep, dict) or (dep.get("postgres") or {}).get("condition") != "service_healthy":
            fail("docker-compose.yml", "authd must depend_on postgres with condition: service_healthy")
        env = {}
        ef = ad.get("env_file")
        ef = ef if isinstance(ef, list) else ([ef] if ef else [])
        ef_paths = []
        for e in ef:
            path, required = (e, True) if isinstance(e, str) else (e.get("path"), e.get("required", True))
            ef_paths.append(path)
            if os.path.normpath(path) == ".env.example":
                env.update(env_example)
            elif required:
                n, vals = env_file_names(path, "docker-compose.yml env_file")
                check_names(n, path)
                env.update(vals)
        if ".env.example" not in [os.path.normpath(p) for p in ef_paths if p]:
            fail("docker-compose.yml", "authd's env_file does not include .env.example")
        e = ad.get("environment") or {}
        if isinstance(e, list):
            e = dict((x.split("=", 1) + [""])[:2] for x in e)
        check_names(sorted(e), "docker-compose.yml: authd environment")
        env.update({k: interpolate(str(v)) for k, v in e.items()})
        ENV_SETS.append(("docker-compose.yml: authd (env_file and environment)", dict(env)))
        for need in ("DATABASE_URL", "AUTHD_BOOTSTRAP_ADMIN_EMAIL", "AUTHD_BOOTSTRAP_ADMIN_PASSWORD"):
            if not env.get(need):
                fail("docker-compose.yml", f"authd gets no {need} (environment or env_file)")
        published = []
        for p in ad.get("ports") or []:
            if isinstance(p, dict):
                host_ip, target = p.get("host_ip"), p.get("target")
            else:
                parts = str(p).split(":")
                host_ip, target = (parts[0] if len(parts) == 3 else None), parts[-1].split("/")[0]
            if host_ip != "127.0.0.1":
                fail("docker-compose.yml", f"authd port {p} is not bound to 127.0.0.1")
            published.append(int(target))
        listen = effective(env, "AUTHD_LISTEN") or ""
        if port_of(listen, "docker-compose.yml: AUTHD_LISTEN") not in published:
            fail("docker-compose.yml", f"the gRPC port of AUTHD_LISTEN={listen} is not published")
        if host_of(listen) in ("127.0.0.1", "localhost"):
            fail("docker-compose.yml", f"AUTHD_LISTEN={listen} is loopback inside the container: unreachable")
        test = (ad.get("healthcheck") or {}).get("test")
        flat = test if isinstance(test, list) else [test or ""]
        if not re.search(r"authd\b.*\bhealthcheck\b", " ".join(map(str, flat))):
            fail("docker-compose.yml", "authd's healthcheck must run `authd healthcheck`")
        drain = drain_seconds(env, "docker-compose.yml")
        sgp = parse_duration(ad.get("stop_grace_period", "10s"), "docker-compose.yml: stop_grace_period")
        if drain is not None and sgp is not None and not sgp > drain:
            fail("docker-compose.yml", f"stop_grace_period ({sgp:g}s) must exceed the drain ({drain:g}s)")


guarded("docker-compose.yml", check_compose)

# ================================================================ 3. Dockerfile
def dockerfile_instructions(path):
    try:
        text = open(path).read()
    except OSError as e:
        fail(path, f"cannot read: {e}")
        return []
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment inside a continuation
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def check_dockerfile():
    ins = dockerfile_instructions("Dockerfile")
    froms = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    if len(froms) < 2:
        fail("Dockerfile", "not multi-stage: fewer than two FROM lines")
    elif not any(w == "COPY" and "--from=" in r for w, r in ins[froms[-1]:]):
        fail("Dockerfile", "the final stage copies nothing from the build stage (COPY --from=...)")
    final = ins[froms[-1]:] if froms else []
    final_image = final[0][1] if final else ""
    users = [r for w, r in final if w == "USER"]
    if not users:
        fail("Dockerfile", "the final stage has no USER: it would run as root")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit():
            fail("Dockerfile", f"USER {users[-1]}: use a numeric uid, so that Kubernetes' runAsNonRoot can verify it")
        elif int(user) == 0:
            fail("Dockerfile", "USER 0 is root")
    hc = [r for w, r in final if w == "HEALTHCHECK"]
    if not hc:
        fail("Dockerfile", "no HEALTHCHECK in the final stage")
    else:
        m = re.search(r"\bCMD\s+(.*)$", hc[-1])
        cmd = m.group(1).strip() if m else ""
        exec_form = cmd.startswith("[")
        words = json.loads(cmd) if exec_form else cmd.split()
        if not re.search(r"authd\b.*\bhealthcheck\b", " ".join(words)):
            fail("Dockerfile", "HEALTHCHECK does not run `authd healthcheck`")
        if "distroless" in final_image and not exec_form:
            fail("Dockerfile", "HEALTHCHECK must be exec form (a JSON array): the distroless image has no shell")
    exposed = set(" ".join(r for w, r in final if w == "EXPOSE").replace("/tcp", "").split())
    for port in ("50051", "9090"):
        if port not in exposed:
            fail("Dockerfile", f"does not EXPOSE {port}")
    denv = {}
    for w, r in final:
        if w == "ENV":
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)", r):
                denv[m.group(1)] = m.group(2).strip('"')
    check_names(sorted(denv), "Dockerfile ENV")
    ENV_SETS.append(("Dockerfile ENV", denv))
    if host_of(denv.get("AUTHD_LISTEN", "127.0.0.1:50051")) in ("127.0.0.1", "localhost"):
        fail("Dockerfile", "AUTHD_LISTEN must be 0.0.0.0:50051 in the image (loopback is unreachable)")
    try:
        ignored = open(".dockerignore").read().split()
        for must in (".env", "target", ".git"):
            if must not in ignored:
                fail(".dockerignore", f"does not exclude {must}")
    except OSError:
        fail(".dockerignore", "missing: the build context would include .env and target/")


guarded("Dockerfile", check_dockerfile)

# ================================================================ 4. the values, parsed by authd itself
def check_values_with_authd():
    for where, env in ENV_SETS:
        env = {k: v for k, v in env.items() if k in KNOWN}
        try:
            r = subprocess.run([AUTHD_BIN, "healthcheck", "--addr", "127.0.0.1:1"], capture_output=True,
                               text=True, timeout=30, env={"PATH": os.environ.get("PATH", ""), **env})
        except (OSError, subprocess.TimeoutExpired) as e:
            fail(where, f"{AUTHD_BIN} healthcheck did not run: {e}")
            continue
        # 1: parsed, then found nothing SERVING at 127.0.0.1:1. 2: clap refused a value.
        if r.returncode != 1 or "error: invalid value" in r.stderr:
            msg = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[0]
            fail(where, f"authd refuses these settings: {msg}")


if AUTHD_BIN:
    guarded("--authd", check_values_with_authd)

# ================================================================ report
problems = list(dict.fromkeys(problems))  # a loose file is checked once per variant: report it once
for w in dict.fromkeys(warnings):
    print(f"warning: {w}")
for p in problems:
    print(f"ERROR: {p}")
n_docs = sum(len(d) for d in file_docs.values())
print(f"check-deploy: {len(file_docs)} manifest files ({n_docs} objects) and {len(rendered)} rendered "
      f"kustomizations; {schema_count} schema validations (kubernetes-validate {kubernetes_validate.__version__}, "
      f"Kubernetes {', '.join(KUBE_VERSIONS)}, strict); variants {', '.join(variants)}; "
      f"{len(KNOWN)} known settings; docker-compose.yml, .env.example, Dockerfile; "
      + (f"{len(ENV_SETS)} sets of settings parsed by {AUTHD_BIN}; " if AUTHD_BIN else "")
      + f"{time.monotonic() - T0:.1f}s")
if problems:
    print(f"check-deploy: FAILED with {len(problems)} problem(s)")
    sys.exit(1)
print("check-deploy: OK" + (" (README completeness skipped)" if SKIP_README else ""))
PY
