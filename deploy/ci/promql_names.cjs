// The series selectors of PromQL expressions (metric name + label names matched), found with
// Prometheus's own grammar (@prometheus-io/lezer-promql) rather than regular expressions, so that
// label names, function names, keywords and strings are never mistaken for metrics.
'use strict';

const { parser } = require('@prometheus-io/lezer-promql');

// Grafana replaces these before a query reaches Prometheus; anything of the same syntax will do.
function expandGrafanaVariables(expr) {
  return expr
    .replace(/\$\{?__(rate_interval|interval|range)\}?/g, '5m')
    .replace(/\$\{?__(range_s|range_ms|interval_ms)\}?/g, '300');
}

// [{metric, labels: [label names in its matchers]}] for every vector selector of `expr`.
// Throws on a syntax error, and on a selector without a plain metric name ({__name__=~"..."}),
// which could not be checked against a scrape.
function selectors(expr) {
  const source = expandGrafanaVariables(expr);
  const found = [];
  const problems = [];
  parser.parse(source).iterate({
    enter(ref) {
      if (ref.type.isError) {
        const from = Math.max(0, ref.from - 20);
        problems.push(`syntax error near "${source.slice(from, ref.to + 20)}"`);
        return false;
      }
      if (ref.name !== 'VectorSelector') return undefined;
      const node = ref.node;
      const identifier = node.getChild('Identifier');
      if (identifier === null) {
        problems.push(`selector without a metric name: ${source.slice(ref.from, ref.to)}`);
        return false;
      }
      const labels = [];
      const matchers = node.getChild('LabelMatchers');
      if (matchers !== null) {
        for (let m = matchers.firstChild; m !== null; m = m.nextSibling) {
          const label = m.getChild('LabelName') || m.getChild('QuotedLabelName');
          if (label !== null) labels.push(source.slice(label.from, label.to).replace(/^"|"$/g, ''));
        }
      }
      found.push({ metric: source.slice(identifier.from, identifier.to), labels });
      return false;
    },
  });
  if (problems.length > 0) throw new Error(`${problems.join('; ')} in: ${expr}`);
  return found;
}

// Grafana templating queries: label_values(selector, label) and query_result(expr).
function templatingSelectors(query) {
  const labelValues = /^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$/s.exec(query);
  if (labelValues) return selectors(labelValues[1]);
  const queryResult = /^\s*query_result\((.*)\)\s*$/s.exec(query);
  if (queryResult) return selectors(queryResult[1]);
  throw new Error(`unsupported templating query: ${query}`);
}

module.exports = { selectors, templatingSelectors, expandGrafanaVariables };
