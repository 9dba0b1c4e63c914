// Every PromQL expression of a Grafana dashboard (panel targets, templating queries) and of a
// Prometheus rule file, each with where it came from.
'use strict';

const fs = require('fs');
const YAML = require('yaml');

function panelsOf(panels, out = []) {
  for (const panel of panels || []) {
    out.push(panel);
    panelsOf(panel.panels, out);  // collapsed rows keep their panels inside
  }
  return out;
}

// [{where, expr, templating}] of a dashboard file.
function dashboardExpressions(file) {
  const dashboard = JSON.parse(fs.readFileSync(file, 'utf8'));
  const found = [];
  for (const panel of panelsOf(dashboard.panels)) {
    for (const target of panel.targets || []) {
      if (typeof target.expr !== 'string') continue;
      found.push({ where: `${file}: panel "${panel.title}" ${target.refId}`, expr: target.expr, templating: false });
    }
  }
  for (const variable of (dashboard.templating && dashboard.templating.list) || []) {
    if (variable.type !== 'query') continue;
    const query = typeof variable.query === 'string' ? variable.query : variable.query.query;
    found.push({ where: `${file}: variable $${variable.name}`, expr: query, templating: true });
  }
  return found;
}

// [{where, expr, templating: false}] of a Prometheus rule file (alerting and recording rules).
function ruleExpressions(file) {
  const document = YAML.parse(fs.readFileSync(file, 'utf8'));
  const found = [];
  for (const group of document.groups || []) {
    for (const rule of group.rules || []) {
      const name = rule.alert || rule.record;
      found.push({ where: `${file}: group ${group.name} rule ${name}`, expr: String(rule.expr), templating: false });
    }
  }
  return found;
}

module.exports = { dashboardExpressions, ruleExpressions, panelsOf };
