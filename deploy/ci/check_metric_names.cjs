#!/usr/bin/env node
// Fails unless every metric that the dashboards and rule files select is exported by the server:
// the name has series in the scrape (histograms only through _bucket/_sum/_count) and every
// label name matched on it is on those series or is a label Prometheus adds to a target.
//
//   node check_metric_names.cjs (--scrape FILE | --url URL) [--dashboard FILE]... [--rules FILE]...
'use strict';

const fs = require('fs');
const { parseExposition, familyOf } = require('./exposition.cjs');
const { dashboardExpressions, ruleExpressions } = require('./expressions.cjs');
const { selectors, templatingSelectors } = require('./promql_names.cjs');

// Attached by Prometheus (or the Prometheus operator) to every series of a target.
const TARGET_LABELS = new Set(['job', 'instance', 'namespace', 'pod', 'service', 'container', 'endpoint', 'node']);

function parseArgs(argv) {
  const args = { scrape: null, url: null, dashboards: [], rules: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag === '--scrape') args.scrape = value;
    else if (flag === '--url') args.url = value;
    else if (flag === '--dashboard') args.dashboards.push(value);
    else if (flag === '--rules') args.rules.push(value);
    else throw new Error(`unknown argument ${flag}`);
  }
  if ((args.scrape === null) === (args.url === null)) throw new Error('give exactly one of --scrape and --url');
  if (args.dashboards.length + args.rules.length === 0) throw new Error('nothing to check: give --dashboard or --rules');
  return args;
}

async function readScrape(args) {
  if (args.scrape !== null) return fs.readFileSync(args.scrape, 'utf8');
  const response = await fetch(args.url);
  if (!response.ok) throw new Error(`GET ${args.url}: HTTP ${response.status}`);
  return response.text();
}

function checkSelector({ metric, labels }, scrape) {
  const family = familyOf(metric, scrape.types);
  if (family === null && !scrape.samples.has(metric)) return [`${metric} is not exported`];
  if (family !== null && !family.allowed) {
    if (family.family === metric) {
      return [`${metric} is a ${family.type}: select ${metric}_bucket, ${metric}_sum or ${metric}_count`];
    }
    return [`${metric} is not exported (${family.family} is a ${family.type})`];
  }
  const seenLabels = scrape.samples.get(metric);
  if (seenLabels === undefined) return [`${metric} is declared but has no series in the scrape`];
  return labels
    .filter((label) => !seenLabels.has(label) && !TARGET_LABELS.has(label))
    .map((label) => `${metric} has no label "${label}" (it has: ${[...seenLabels].join(', ') || 'none'})`);
}

// {expressions, used, problems} of checking the files' expressions against a scrape's text.
function checkFiles(scrapeText, dashboards, rules) {
  const scrape = parseExposition(scrapeText);
  const expressions = [...dashboards.flatMap(dashboardExpressions), ...rules.flatMap(ruleExpressions)];
  if (expressions.length === 0) throw new Error('the given files hold no expression');
  const problems = [];
  const used = new Set();
  for (const { where, expr, templating } of expressions) {
    let found;
    try {
      found = templating ? templatingSelectors(expr) : selectors(expr);
    } catch (error) {
      problems.push(`${where}: ${error.message}`);
      continue;
    }
    if (found.length === 0) problems.push(`${where}: selects no metric: ${expr}`);
    for (const selector of found) {
      used.add(selector.metric);
      for (const problem of checkSelector(selector, scrape)) problems.push(`${where}: ${problem}`);
    }
  }
  return { expressions, used, problems, sampleNames: scrape.samples.size };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { expressions, used, problems, sampleNames } =
    checkFiles(await readScrape(args), args.dashboards, args.rules);
  console.log(`checked ${expressions.length} expressions selecting ${used.size} metric names ` +
              `against a scrape of ${sampleNames} sample names`);
  for (const name of [...used].sort()) console.log(`  ${name}`);
  if (problems.length > 0) {
    for (const problem of problems) console.error(`FAIL ${problem}`);
    process.exit(1);
  }
  console.log('every selected metric is exported');
}

if (require.main === module) {
  main().catch((error) => {
    console.error(`check_metric_names: ${error.message}`);
    process.exit(2);
  });
}
module.exports = { checkFiles };
