// Runs the conformance scenario through jsforce 3 and prints one normalised result per step.
//
//   NODE_EXTRA_CA_CERTS=ca.pem SANDBOX_URL=https://127.0.0.1:PORT SANDBOX_TOKEN=... \
//     node run.mjs scenario.json
//
// The sandbox's CA is trusted through NODE_EXTRA_CA_CERTS, which Node reads at start; TLS
// verification stays on (the script refuses to run with it turned off).
import { readFileSync } from 'node:fs';
import jsforce from 'jsforce';

const VERSION = '64.0';

function fail(message) {
  process.stderr.write(`run.mjs: ${message}\n`);
  process.exit(2);
}

const [scenarioPath] = process.argv.slice(2);
const { SANDBOX_URL: instanceUrl, SANDBOX_TOKEN: accessToken } = process.env;
if (!scenarioPath || !instanceUrl || !accessToken) {
  fail('usage: SANDBOX_URL=... SANDBOX_TOKEN=... node run.mjs scenario.json');
}
if (!process.env.NODE_EXTRA_CA_CERTS) fail('NODE_EXTRA_CA_CERTS must name the sandbox CA file');
if (process.env.NODE_TLS_REJECT_UNAUTHORIZED === '0') fail('TLS verification must stay on');

// Only what a step's expectation can compare: the shapes both client adapters produce.
const strip = (record) => {
  const { attributes, ...rest } = record;
  for (const [key, value] of Object.entries(rest)) {
    if (value && typeof value === 'object' && !Array.isArray(value)) rest[key] = strip(value);
  }
  return rest;
};
const saveResult = (r) => ({
  success: r.success,
  ...(r.created === undefined ? {} : { created: r.created }),
  errors: r.errors ?? [],
});

let conn;
const ops = {
  async login() {
    // Access-token login: a connection from the instance URL and a token, no login call.
    conn = new jsforce.Connection({ instanceUrl, accessToken, version: VERSION });
    return { connected: Boolean(conn.accessToken) };
  },
  async identity() {
    const id = await conn.identity();
    return { username: id.username, organization_id: id.organization_id, user_id: id.user_id };
  },
  async create({ sobject, record }) {
    const r = await conn.sobject(sobject).create(record);
    return { success: r.success, errors: r.errors ?? [], id_prefix: String(r.id).slice(0, 3) };
  },
  async query({ soql }) {
    const r = await conn.query(soql);
    return { totalSize: r.totalSize, done: r.done, records: r.records.map(strip) };
  },
  async describe({ sobject }) {
    const d = await conn.sobject(sobject).describe();
    return {
      name: d.name,
      keyPrefix: d.keyPrefix,
      fields: Object.fromEntries(d.fields.map((f) => [f.name, f])),
    };
  },
  async upsert_collection({ sobject, external_id, all_or_none, records }) {
    const typed = records.map((r) => ({ attributes: { type: sobject }, ...r }));
    const results = await conn
      .sobject(sobject)
      .upsert(typed, external_id, { allOrNone: all_or_none });
    return results.map(saveResult);
  },
  async limits() {
    return conn.limits();
  },
  async bulk_upsert({ sobject, external_id, records }) {
    const r = await conn.bulk2.loadAndWaitForResults({
      object: sobject,
      operation: 'upsert',
      externalIdFieldName: external_id,
      input: records,
      pollInterval: 100,
      pollTimeout: 30000,
    });
    return {
      numberRecordsProcessed: r.successfulResults.length + r.failedResults.length,
      numberRecordsFailed: r.failedResults.length,
      successful: r.successfulResults,
      failed: r.failedResults,
    };
  },
};

const scenario = JSON.parse(readFileSync(scenarioPath, 'utf8'));
const out = [];
for (const step of scenario.steps) {
  try {
    out.push({ name: step.name, result: await ops[step.op](step.args ?? {}) });
  } catch (err) {
    out.push({
      name: step.name,
      error: { name: err.name, errorCode: err.errorCode, message: err.message, content: err.data },
    });
  }
}
process.stdout.write(JSON.stringify(out));
