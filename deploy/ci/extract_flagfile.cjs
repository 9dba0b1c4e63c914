#!/usr/bin/env node
// Writes the squat-server flag file of a rendered chart (the data key server.flags of its
// *-flags ConfigMap) to OUT, so that the real server binary can parse it.
//   node extract_flagfile.cjs RENDERED.yaml OUT
'use strict';

const fs = require('fs');
const YAML = require('yaml');

const [rendered, out] = process.argv.slice(2);
if (!rendered || !out) {
  console.error('usage: extract_flagfile.cjs RENDERED.yaml OUT');
  process.exit(2);
}
const flagMaps = YAML.parseAllDocuments(fs.readFileSync(rendered, 'utf8'))
  .map((document) => document.toJS())
  .filter((o) => o && o.kind === 'ConfigMap' && o.data && typeof o.data['server.flags'] === 'string');
if (flagMaps.length !== 1) {
  console.error(`extract_flagfile: ${rendered} has ${flagMaps.length} ConfigMaps with server.flags, expected 1`);
  process.exit(1);
}
fs.writeFileSync(out, flagMaps[0].data['server.flags']);
