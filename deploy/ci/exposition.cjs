// Parses the Prometheus text exposition format (version 0.0.4) into what the name checks need:
// metric families with their types, and the sample names with the label names seen on them.
'use strict';

const SAMPLE = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+(\s+-?\d+)?\s*$/;
const LABEL = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/gy;

function parseLabelNames(text, line) {
  const names = [];
  LABEL.lastIndex = 0;
  while (LABEL.lastIndex < text.length) {
    const match = LABEL.exec(text);
    if (match === null) throw new Error(`malformed labels in: ${line}`);
    names.push(match[1]);
  }
  return names;
}

// {types: Map family -> type, samples: Map sample name -> Set of label names}
function parseExposition(text) {
  const types = new Map();
  const samples = new Map();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const type = /^# TYPE ([A-Za-z_:][A-Za-z0-9_:]*) (counter|gauge|histogram|summary|untyped)\s*$/.exec(line);
      if (type) types.set(type[1], type[2]);
      continue;
    }
    const sample = SAMPLE.exec(line);
    if (sample === null) throw new Error(`not an exposition line: ${line}`);
    if (!samples.has(sample[1])) samples.set(sample[1], new Set());
    for (const label of parseLabelNames(sample[3] || '', line)) samples.get(sample[1]).add(label);
  }
  return { types, samples };
}

// The family a sample name belongs to, and whether the family's type allows that name.
function familyOf(name, types) {
  if (types.has(name)) {
    const type = types.get(name);
    return { family: name, type, allowed: type !== 'histogram' };
  }
  const suffix = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (suffix && types.has(suffix[1])) {
    const type = types.get(suffix[1]);
    const allowed = type === 'histogram' || (type === 'summary' && suffix[2] !== 'bucket');
    return { family: suffix[1], type, allowed };
  }
  return null;
}

module.exports = { parseExposition, familyOf };
