"""Service invocation through the official Python SDK (HTTP invocation): DaprClient talks to the
caller's sidecar (DAPR_HTTP_PORT), which forwards to app `pyb` through its sidecar."""
import json
import sys

from dapr.clients import DaprClient


def main() -> int:
    with DaprClient() as client:
        resp = client.invoke_method(
            app_id='pyb',
            method_name='orders/place',
            data=json.dumps({'item': 'tea', 'qty': 2}),
            content_type='application/json',
            http_verb='POST',
            http_querystring=(('priority', 'high'),),
        )
        if resp.status_code != 200:
            print(f'unexpected status {resp.status_code}: {resp.text()}', file=sys.stderr)
            return 1
        echoed = json.loads(resp.text())
        expected = {'method': 'POST', 'uri': '/orders/place?priority=high'}
        for key, value in expected.items():
            if echoed.get(key) != value:
                print(f'{key}: expected {value!r}, got {echoed.get(key)!r}', file=sys.stderr)
                return 1
        if json.loads(echoed['body']) != {'item': 'tea', 'qty': 2}:
            print(f'body: got {echoed["body"]!r}', file=sys.stderr)
            return 1
        if resp.content_type is None or not resp.content_type.startswith('application/json'):
            print(f'content type: got {resp.content_type!r}', file=sys.stderr)
            return 1
    print('ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
