// Tests of check_metric_names.cjs against the hand-made scrape in testdata/: the real dashboard
// and rules pass, and each way of being wrong is caught. Run: node --test check_metric_names.test.cjs
'use strict';

const assert = require('node:assert');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const { dashboardExpressions, ruleExpressions } = require('./expressions.cjs');
const { selectors } = require('./promql_names.cjs');
const { checkFiles } = require('./check_metric_names.cjs');

const DEPLOY = path.resolve(__dirname, '..');
const CHECKER = path.join(__dirname, 'check_metric_names.cjs');
const SAMPLE = path.join(__dirname, 'testdata', 'sample_scrape.txt');
const DASHBOARD = path.join(DEPLOY, 'grafana', 'squat-serve.json');
const RULES = path.join(DEPLOY, 'prometheus', 'squat-serve.rules.yaml');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'check-metric-names-'));

function check(scrapeText, dashboard = DASHBOARD, rules = RULES) {
  const scrape = path.join(work, `scrape-${Math.random().toString(36).slice(2)}.txt`);
  fs.writeFileSync(scrape, scrapeText);
  return spawnSync(process.execPath, [CHECKER, '--scrape', scrape, '--dashboard', dashboard, '--rules', rules],
                   { encoding: 'utf8' });
}

function withDashboardExpr(expr) {
  const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
  const panel = dashboard.panels.find((p) => Array.isArray(p.targets) && p.targets.length > 0);
  panel.targets[0].expr = expr;
  const file = path.join(work, `dashboard-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(file, JSON.stringify(dashboard));
  return file;
}

const sample = fs.readFileSync(SAMPLE, 'utf8');

// Family names that the dashboard and rules use, from the same parser the checker uses.
const usedFamilies = [...new Set(
  [...dashboardExpressions(DASHBOARD), ...ruleExpressions(RULES)]
    .filter((e) => !e.templating)
    .flatMap((e) => selectors(e.expr).map((s) => s.metric.replace(/_(bucket|sum|count)$/, ''))),
)];

test('the dashboard and the rules pass against the sample scrape', () => {
  const result = check(sample);
  assert.strictEqual(result.status, 0, result.stderr + result.stdout);
  assert.match(result.stdout, /every selected metric is exported/);
});

test('every metric family the dashboard or the rules use is required', () => {
  assert.ok(usedFamilies.length >= 15, `only ${usedFamilies.length} families found`);
  for (const family of usedFamilies) {
    const pattern = new RegExp(`^(# (HELP|TYPE) )?${family}(_bucket|_sum|_count)?[ {]`);
    const without = sample.split('\n').filter((line) => !pattern.test(line)).join('\n');
    assert.notStrictEqual(without, sample, `${family} is not in the sample scrape`);
    const { problems } = checkFiles(without, [DASHBOARD], [RULES]);  // in-process: 20+ cases
    assert.ok(problems.some((p) => new RegExp(`${family}\\w* is not exported`).test(p)),
              `removing ${family} went unnoticed`);
  }
});

test('a declared family without series fails (labelled metrics appear only once used)', () => {
  const without = sample.split('\n').filter((line) => !line.startsWith('squat_request_errors_total{')).join('\n');
  const result = check(without);
  assert.strictEqual(result.status, 1);
  assert.match(result.stderr, /squat_request_errors_total is declared but has no series/);
});

test('a matched label that the series lack fails', () => {
  const renamed = sample.replace(/^squat_kv_bytes_per_token\{format=/gm, 'squat_kv_bytes_per_token{kv_format=');
  const result = check(renamed);
  assert.strictEqual(result.status, 1);
  assert.match(result.stderr, /squat_kv_bytes_per_token has no label "format"/);
});

test('a histogram selected without _bucket/_sum/_count fails', () => {
  const dashboard = withDashboardExpr('rate(squat_time_to_first_token_seconds[5m])');
  const result = check(sample, dashboard);
  assert.strictEqual(result.status, 1);
  assert.match(result.stderr, /squat_time_to_first_token_seconds is a histogram/);
});

test('a suffix that the family type does not have fails', () => {
  const dashboard = withDashboardExpr('squat_requests_running_count');
  const result = check(sample, dashboard);
  assert.strictEqual(result.status, 1);
  assert.match(result.stderr, /squat_requests_running_count is not exported/);
});

test('a PromQL syntax error fails', () => {
  const dashboard = withDashboardExpr('sum(rate(squat_requests_total[$__rate_interval])');
  const result = check(sample, dashboard);
  assert.strictEqual(result.status, 1);
  assert.match(result.stderr, /syntax error/);
});

test('names inside strings, label names and functions are not metrics', () => {
  const found = selectors('sum by (format) (rate(squat_requests_total{finish_reason="squat_fake_metric"}[$__rate_interval])) / on (job) group_left count(up)');
  assert.deepStrictEqual(found.map((s) => s.metric), ['squat_requests_total', 'up']);
  assert.deepStrictEqual(found[0].labels, ['finish_reason']);
});

test('the checker itself runs from the command line', () => {
  const out = execFileSync(process.execPath, [CHECKER, '--scrape', SAMPLE, '--rules', RULES], { encoding: 'utf8' });
  assert.match(out, /checked 5 expressions/);
});
