#!/usr/bin/env node
// Validates rendered Kubernetes manifests offline against the OpenAPI schemas that the npm
// packages kubernetes-models (built-in kinds), @kubernetes-models/prometheus-operator and
// @kubernetes-models/keda compile into validators: types, required fields, enums, formats.
// Those validators accept unknown fields, which the API server rejects under strict field
// validation; so each object is validated through a proxy that records which fields the
// validator looked at, and a field it never looked at (in an object whose schema has named
// properties) is reported as unknown, the way `kubectl apply --validate=strict` would.
//
//   node validate_k8s.cjs FILE...      (multi-document YAML, e.g. `helm template` output)
'use strict';

const fs = require('fs');
const YAML = require('yaml');

function modelClass(apiVersion, kind) {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion];
  const candidates = group === ''
    ? [`kubernetes-models/${version}/${kind}`]
    : [`kubernetes-models/${group}/${version}/${kind}`,
       `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`,
       `@kubernetes-models/keda/${group}/${version}/${kind}`];
  for (const path of candidates) {
    try {
      return require(path)[kind];
    } catch (error) {
      if (error.code !== 'MODULE_NOT_FOUND' && error.code !== 'ERR_PACKAGE_PATH_NOT_EXPORTED') throw error;
    }
  }
  return null;
}

// Wraps `value` so that every property read, `in` test and key enumeration is recorded in
// `objects` (one entry per plain object reached).
function tracked(value, path, objects) {
  if (value === null || typeof value !== 'object') return value;
  const entry = { path, value, read: new Set(), enumerated: false };
  if (!Array.isArray(value)) objects.push(entry);
  const children = new Map();
  return new Proxy(value, {
    get(target, key, receiver) {
      const child = Reflect.get(target, key, receiver);
      if (typeof key !== 'string') return child;
      entry.read.add(key);
      if (child === null || typeof child !== 'object' || !Object.prototype.hasOwnProperty.call(target, key)) {
        return child;
      }
      if (!children.has(key)) {
        const childPath = Array.isArray(target) ? `${path}[${key}]` : `${path}.${key}`;
        children.set(key, tracked(child, childPath, objects));
      }
      return children.get(key);
    },
    has(target, key) {
      if (typeof key === 'string') entry.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      entry.enumerated = true;  // a map (labels, resources, ...): any key is allowed
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(objects) {
  const unknown = [];
  for (const { path, value, read, enumerated } of objects) {
    if (enumerated || read.size === 0) continue;  // free-form object: nothing to compare with
    for (const key of Object.keys(value)) {
      if (!read.has(key)) unknown.push(`${path}.${key}`);
    }
  }
  return unknown;
}

// Problems of one manifest object, [] when it is valid.
function validateObject(object) {
  if (object === null || typeof object !== 'object') return ['not an object'];
  const { apiVersion, kind } = object;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return ['apiVersion or kind missing'];
  const Model = modelClass(apiVersion, kind);
  if (Model === null) return [`no schema known for ${apiVersion} ${kind}`];
  const problems = [];
  if (!object.metadata || typeof object.metadata.name !== 'string' || object.metadata.name === '') {
    problems.push('metadata.name missing');
  }
  const objects = [];
  const view = tracked(JSON.parse(JSON.stringify(object)), '', objects);
  try {
    Model.prototype.validate.call(view);  // the package's compiled schema validator
  } catch (error) {
    problems.push(...(error.errors || [error]).map((e) => (e.instancePath !== undefined
      ? `${e.instancePath || '/'} ${e.message}${e.params && e.params.allowedValues ? ` (${e.params.allowedValues.join(', ')})` : ''}`
      : e.message)));
    return problems;  // unknown-field tracking is only meaningful after a full pass
  }
  problems.push(...unknownFields(objects).map((field) => `unknown field ${field.slice(1)}`));
  return problems;
}

function main() {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error('usage: validate_k8s.cjs FILE...');
    process.exit(2);
  }
  let count = 0;
  let failed = 0;
  for (const file of files) {
    const documents = YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'));
    for (const document of documents) {
      if (document.errors.length > 0) {
        console.error(`FAIL ${file}: YAML: ${document.errors.map((e) => e.message).join('; ')}`);
        failed++;
        continue;
      }
      const object = document.toJS();
      if (object === null) continue;  // an empty document between separators
      count++;
      const name = `${object.kind}/${object.metadata && object.metadata.name}`;
      const problems = validateObject(object);
      if (problems.length === 0) {
        console.log(`ok   ${file}: ${object.apiVersion} ${name}`);
      } else {
        failed++;
        for (const problem of problems) console.error(`FAIL ${file}: ${name}: ${problem}`);
      }
    }
  }
  console.log(`${count} objects, ${failed} invalid`);
  if (count === 0 || failed > 0) process.exit(1);
}

if (require.main === module) main();
module.exports = { validateObject };
