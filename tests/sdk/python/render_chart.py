"""Lints and renders a Helm chart offline with Helm's own Go library (PyPI helm-python-sdk).

Usage: render_chart.py CHART_DIR RELEASE NAMESPACE [VALUES_JSON]
Prints {"lint": {...}, "manifests": {template path: rendered text}} as JSON. Exits 1 when
`helm lint --strict` reports errors or a template fails to render.
"""

import json
import sys

import helm_python as helm


def main() -> int:
    chart_dir, release, namespace = sys.argv[1:4]
    values = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    lint = helm.lint(chart_dir, values, strict=True, namespace=namespace)
    if lint.get("errors"):
        print(json.dumps({"lint": lint}), file=sys.stderr)
        return 1
    chart = helm.Chart.load(chart_dir)
    try:
        manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    finally:
        chart.close()
    print(json.dumps({"lint": lint, "manifests": manifests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
