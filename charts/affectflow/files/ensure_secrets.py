# The affectflow chart's credentials hook (pre-install / pre-upgrade Job). It makes the Secrets the chart
# does not render, so that no credential is generated at render time (`helm template` stays stable).
#
# The plan is JSON in $AFFECTFLOW_SECRETS_PLAN, written by the chart: names, namespaces, key names and
# non-secret values, never a credential.
#   generate: create the Secret with random values if it does not exist; an existing one is kept as it
#             is (credentials are made once, then survive every upgrade and re-sync).
#   copy:     write the target Secret (the pipeline's, in the Kubeflow namespace) from a source Secret,
#             renaming keys and adding fixed values (endpoint, region); rewritten when the source
#             changed, provided the target is one this hook wrote (or this release's Helm copy from an
#             older chart version, which it takes over and marks helm.sh/resource-policy=keep).
# A Secret this release's Helm rendered before (chart <= 0.1.0) would be deleted by Helm after this
# upgrade; for a generated one the hook stops the upgrade and says how to keep it.
#
# It uses the kubernetes Python client (kfp's dependency, so in the affectflow images) and needs only
# get and create on Secrets (get and update on the one copy target).
import base64
import json
import os
import secrets
import string
import sys

OWNER_ANNOTATION = "affectflow.io/credentials-hook"
KEEP = "helm.sh/resource-policy"
HELM_RELEASE = "meta.helm.sh/release-name"
HELM_NAMESPACE = "meta.helm.sh/release-namespace"
ALPHABETS = {"alnum": string.ascii_letters + string.digits, "upper": string.ascii_uppercase + string.digits}


class PlanError(RuntimeError):
    """Something a person has to fix; the message says what."""


def random_value(length, alphabet="alnum"):
    return "".join(secrets.choice(ALPHABETS[alphabet]) for _ in range(int(length)))


def _status(exc):
    return getattr(exc, "status", None)


def _decode(data):
    return {k: base64.b64decode(v).decode() for k, v in (data or {}).items()}


def _body(namespace, name, data, labels, annotations):
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                         "annotations": dict(annotations)},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(data.items())}}


def read(api, namespace, name):
    try:
        return api.read_namespaced_secret(name, namespace)
    except Exception as exc:
        if _status(exc) == 404:
            return None
        raise


def _annotations(secret):
    return dict(getattr(secret.metadata, "annotations", None) or {})


def _helm_release(secret):
    ann = _annotations(secret)
    return (ann[HELM_RELEASE], ann.get(HELM_NAMESPACE)) if HELM_RELEASE in ann else None


def generate(api, plan, item, log):
    ns, name = item["namespace"], item["name"]
    existing = read(api, ns, name)
    if existing is not None:
        helm = _helm_release(existing)
        if helm is not None and _annotations(existing).get(KEEP) != "keep":
            raise PlanError(
                f"Secret {ns}/{name} belongs to Helm release {helm[0]} (an older chart rendered it), so "
                f"Helm would delete it after this upgrade and the credentials in it would be lost. Keep "
                f"it, then upgrade again:  kubectl -n {ns} annotate secret {name} {KEEP}=keep")
        missing = sorted(set(item["random"]) - set(existing.data or {}))
        if missing:
            raise PlanError(f"Secret {ns}/{name} exists without the keys {missing}: add them, or delete "
                            f"the Secret to have new credentials generated")
        log(f"{ns}/{name}: exists, kept")
        return "kept"
    data = {key: random_value(**spec) for key, spec in item["random"].items()}
    data.update(item.get("static", {}))
    body = _body(ns, name, data, plan.get("labels", {}), {OWNER_ANNOTATION: plan["owner"], KEEP: "keep"})
    try:
        api.create_namespaced_secret(ns, body)
    except Exception as exc:
        if _status(exc) == 409:  # created meanwhile (a concurrent run): keep that one
            log(f"{ns}/{name}: created by someone else meanwhile, kept")
            return "kept"
        raise
    log(f"{ns}/{name}: created ({', '.join(sorted(data))})")
    return "created"


def copy(api, plan, item, log):
    src_ns, src_name = item["from"]["namespace"], item["from"]["name"]
    ns, name = item["to"]["namespace"], item["to"]["name"]
    if (src_ns, src_name) == (ns, name):
        log(f"{ns}/{name}: is its own source, nothing to copy")
        return "same"
    source = read(api, src_ns, src_name)
    if source is None:
        raise PlanError(f"Secret {src_ns}/{src_name} not found: create it (s3.existingSecret names it)")
    values = _decode(source.data)
    missing = sorted(k for k in item["keys"].values() if k not in values)
    if missing:
        raise PlanError(f"Secret {src_ns}/{src_name} has no keys {missing} (s3.existingSecretKeys)")
    data = {target: values[key] for target, key in item["keys"].items()}
    data.update(item.get("static", {}))
    body = _body(ns, name, data, plan.get("labels", {}), {OWNER_ANNOTATION: plan["owner"], KEEP: "keep"})
    target = read(api, ns, name)
    if target is None:
        try:
            api.create_namespaced_secret(ns, body)
            log(f"{ns}/{name}: created from {src_ns}/{src_name}")
            return "created"
        except Exception as exc:
            if _status(exc) != 409:
                raise
            target = read(api, ns, name)
    ours = _annotations(target).get(OWNER_ANNOTATION) == plan["owner"]
    ours_from_helm = _helm_release(target) == (plan["release"]["name"], plan["release"]["namespace"])
    if not (ours or ours_from_helm):
        log(f"{ns}/{name}: exists and was not written by this hook: left as it is")
        return "foreign"
    if ours and _decode(target.data) == data:
        log(f"{ns}/{name}: up to date")
        return "unchanged"
    body["metadata"]["resourceVersion"] = target.metadata.resource_version
    api.replace_namespaced_secret(name, ns, body)
    log(f"{ns}/{name}: updated from {src_ns}/{src_name}")
    return "updated"


def run(api, plan, log=print):
    results = {}
    for item in plan.get("generate", []):
        results[f"{item['namespace']}/{item['name']}"] = generate(api, plan, item, log)
    for item in plan.get("copy", []):
        results[f"{item['to']['namespace']}/{item['to']['name']}"] = copy(api, plan, item, log)
    return results


def main():
    plan = json.loads(os.environ["AFFECTFLOW_SECRETS_PLAN"])
    from kubernetes import client, config

    config.load_incluster_config()
    try:
        run(client.CoreV1Api(), plan)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
