// Tests of validate_k8s.cjs: valid objects pass; wrong types, misspelt fields at any depth and
// unknown kinds fail. Run: node --test validate_k8s.test.cjs
'use strict';

const assert = require('node:assert');
const test = require('node:test');
const { validateObject } = require('./validate_k8s.cjs');

function deployment() {
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'd', labels: { 'any.label/key': 'x' } },
    spec: {
      selector: { matchLabels: { app: 'd' } },
      template: {
        metadata: { labels: { app: 'd' }, annotations: { 'checksum/flags': 'abc' } },
        spec: {
          containers: [{
            name: 'c',
            image: 'squat-serve:0.1.0',
            args: ['--flagfile=/etc/f'],
            ports: [{ name: 'grpc', containerPort: 50051 }],
            readinessProbe: { grpc: { port: 50051 }, periodSeconds: 5 },
            resources: { limits: { 'nvidia.com/gpu': 1, memory: '48Gi' } },
          }],
          tolerations: [{ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' }],
        },
      },
    },
  };
}

test('a valid Deployment with free-form maps (labels, resources) passes', () => {
  assert.deepStrictEqual(validateObject(deployment()), []);
});

test('a misspelt field deep inside the pod template is unknown', () => {
  const d = deployment();
  d.spec.template.spec.containers[0].livenesProbe = { grpc: { port: 50051 } };
  assert.deepStrictEqual(validateObject(d), ['unknown field spec.template.spec.containers[0].livenesProbe']);
});

test('a field of the wrong type fails', () => {
  const d = deployment();
  d.spec.template.spec.containers[0].readinessProbe.grpc.port = 'grpc';  // gRPC probes need a number
  const problems = validateObject(d);
  assert.strictEqual(problems.length, 1, problems.join('\n'));
  assert.match(problems[0], /readinessProbe\/grpc\/port must be integer/);
});

test('a missing required field fails', () => {
  const d = deployment();
  delete d.spec.template.spec.containers[0].name;
  assert.match(validateObject(d).join('\n'), /must have required property '?name'?/);
});

test('custom resources are checked too: KEDA and the Prometheus operator', () => {
  const scaled = {
    apiVersion: 'keda.sh/v1alpha1', kind: 'ScaledObject', metadata: { name: 's' },
    spec: { scaleTargetRef: { name: 'd' }, maxReplicaCount: 3,
            triggers: [{ type: 'prometheus', metadata: { query: 'sum(x)', threshold: '4' } }] },
  };
  assert.deepStrictEqual(validateObject(scaled), []);
  scaled.spec.maxReplicas = 3;  // the HPA's spelling
  assert.deepStrictEqual(validateObject(scaled), ['unknown field spec.maxReplicas']);

  const monitor = {
    apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', metadata: { name: 'm' },
    spec: { selector: { matchLabels: { a: 'b' } }, endpoints: [{ port: 'metrics', interval: '15s' }] },
  };
  assert.deepStrictEqual(validateObject(monitor), []);
  monitor.spec.endpoints[0].interval = 'often';
  assert.match(validateObject(monitor).join('\n'), /interval must match pattern/);
});

test('a kind without a schema and unknown top-level or metadata fields fail', () => {
  assert.deepStrictEqual(validateObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }),
                         ['no schema known for example.com/v1 Widget']);
  const cm = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' }, data: { a: 'b' } };
  assert.deepStrictEqual(validateObject(cm), []);
  assert.deepStrictEqual(validateObject({ ...cm, spec: { a: 'b' } }), ['unknown field spec']);
  assert.deepStrictEqual(validateObject({ ...cm, metadata: { name: 'c', label: { a: 'b' } } }),
                         ['unknown field metadata.label']);
});
