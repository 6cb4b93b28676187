// Drives Debian's chromium (headless, via playwright-core) against a running coordinator's
// dashboard. Loopback only; every wait is bounded.
//   node dashboard_test.mjs URL TOKEN JOB MOE_JOB OUT_DIR
// JOB is a real training job (MoE, ep=2) that is RUNNING; MOE_JOB was fed synthetic figures
// (also MFU and device memory, which the trainer does not report yet). Checks:
//   1. without the token (or with a wrong one) the page, its files and its API are refused (401);
//   2. /?token=TOKEN signs in, drops the token from the address bar, and shows JOB in the list;
//   3. JOB's loss curve gains points while it runs (the page polls, no reload), and its expert
//      load and all-to-all bytes are drawn, with the bytes LSH saved once past its warm-up;
//   4. MOE_JOB shows the expert-load heat map, all-to-all bytes with and without LSH, and MFU.
// Screenshots: OUT_DIR/dashboard.png (JOB) and OUT_DIR/dashboard-moe.png (MOE_JOB).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, token, job, moeJob, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: node dashboard_test.mjs URL TOKEN JOB MOE_JOB OUT_DIR');
  process.exit(2);
}
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(url)) {
  console.error(`refusing ${url}: loopback (http://127.0.0.1:PORT) only`);
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error('FAILED: ' + what);
  console.log('ok: ' + what);
}

const profile = mkdtempSync(join(tmpdir(), 'grove-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.GROVE_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage'],
  timeout: 30000,
});
// Nothing but the coordinator under test may be reached.
await context.route('**/*', (route) => {
  const u = route.request().url();
  if (u.startsWith(url + '/')) return route.continue();
  console.error('blocked a request to ' + u);
  return route.abort();
});
const result = { url };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  // 1. Refused without the token.
  let resp = await page.goto(url + '/');
  check(resp.status() === 401, `GET / without the token is 401 (got ${resp.status()})`);
  const refusedText = await page.textContent('body');
  check(refusedText.includes('token') && !refusedText.includes(job),
    'the refusal names the token and shows no job');
  for (const path of ['/static/app.js', '/api/jobs', `/api/jobs/${job}`, '/metrics']) {
    const r = await page.request.get(url + path);
    check(r.status() === 401, `GET ${path} without the token is 401 (got ${r.status()})`);
  }
  resp = await page.goto(url + '/?token=wrong-' + token);
  check(resp.status() === 401, `a wrong token is 401 (got ${resp.status()})`);
  const wrongHeader = await page.request.get(url + '/api/jobs',
    { headers: { Authorization: 'Bearer x' + token } });
  check(wrongHeader.status() === 401, 'a wrong bearer header is 401');

  // 2. Signed in with the token. (The refusals above logged failed loads; start afresh.)
  consoleErrors.length = 0;
  resp = await page.goto(`${url}/?token=${encodeURIComponent(token)}#job=${job}`);
  check(resp.status() === 200, `/?token=… lands on the page (got ${resp.status()})`);
  check(!page.url().includes(token), `the token left the address bar (${page.url()})`);
  await page.waitForSelector(`#job-list tr[data-job="${job}"]`);
  check(true, `the job list shows ${job}`);
  await page.waitForFunction((id) => document.querySelector('#job-title')?.textContent.includes(id), job);
  const rowState = await page.textContent(`#job-list tr[data-job="${job}"] .state`);
  check(rowState === 'RUNNING', `${job} is RUNNING in the list (got ${rowState})`);

  // 3. The loss curve gains points while the job runs.
  const points = () => page.$eval('#loss-chart', (e) => Number(e.dataset.points));
  await page.waitForFunction(() => Number(document.querySelector('#loss-chart').dataset.points) >= 2,
    null, { timeout: 30000 });
  const first = await points();
  const firstAt = Date.now();
  await page.waitForFunction((n) => Number(document.querySelector('#loss-chart').dataset.points) > n,
    first, { timeout: 40000 });
  const second = await points();
  check(second > first, `the loss curve grew from ${first} to ${second} points in ` +
    `${((Date.now() - firstAt) / 1000).toFixed(1)} s`);
  const plotted = await page.evaluate(() => {
    const c = window.groveDashboard.charts['loss-chart'];
    return { n: c.data[0].length, last: c.data[1][c.data[1].length - 1] };
  });
  check(plotted.n >= second && Number.isFinite(plotted.last) && plotted.last > 0,
    `uPlot holds ${plotted.n} points, latest loss ${plotted.last}`);
  const apiLast = await page.evaluate(async (id) => {
    const r = await fetch(`/api/jobs/${id}`);
    return (await r.json()).job;
  }, job);
  check(Number(apiLast.last_step) >= second, 'the API (with the cookie) agrees on the progress');
  await page.waitForFunction(() => Number(document.querySelector('#memory-chart').dataset.points) > 0);
  // The job's own MoE figures (one MoE layer, ep=2, LSH on).
  await page.waitForFunction(() => Number(document.querySelector('#expert-heatmap').dataset.steps) > 0);
  const realLayers = await page.$$eval('#moe-layer option', (o) => o.length);
  check(realLayers === 1, `the job's expert load is drawn for its 1 MoE layer (got ${realLayers})`);
  await page.waitForFunction(() => Number(document.querySelector('#a2a-chart').dataset.points) > 0);
  // Past its LSH warm-up (2 steps) the job's steps send fewer bytes than the plain all-to-all:
  // the summary line shows the last step's share saved, the chart's note the share so far.
  const saved = (text) => Number((/LSH saved (\d+\.\d) %/.exec(text || '') || [])[1] || 0);
  const lastSaved = await page.waitForFunction(() => {
    const m = /LSH saved (\d+\.\d) %/.exec(document.querySelector('#a2a-last')?.textContent || '');
    return m && Number(m[1]) > 0;
  }, null, { timeout: 30000 }).then(() => true, () => false);
  const realLast = await page.textContent('#a2a-last');
  check(lastSaved && /^all-to-all \(last step\): [\d.]+ \S+ of [\d.]+ \S+ \(LSH saved \d+\.\d %\)$/
    .test(realLast), `the job's last step shows the bytes LSH saved: "${realLast}"`);
  const realA2a = await page.textContent('#a2a-summary');
  check(/^rank 0 over \d+ steps: .* sent of .* uncompressed \(LSH saved/.test(realA2a) &&
    saved(realA2a) > 0, `the job's all-to-all bytes so far: "${realA2a}"`);
  result.a2a = [realLast, realA2a];
  const workers = await page.$$eval('#workers tbody tr', (rows) => rows.length);
  check(workers === 2, `the workers table lists 2 ranks (got ${workers})`);
  const layoutText = await page.textContent('#layout');
  check(/tp × cp × ep × dp/.test(layoutText), 'the layout is shown');
  // Predicted beside measured step time (the coordinator runs with a cluster description).
  check(Number(apiLast.layout.predicted_step_ms) > 0 && Number(apiLast.last_step_ms) > 0,
    `the API has predicted (${apiLast.layout.predicted_step_ms}) and measured ` +
    `(${apiLast.last_step_ms}) step times`);
  check(/predicted step\s*[\d,.]+ ms/.test(layoutText) && /cost model on cpu-this-machine/.test(layoutText),
    'the layout panel shows the predicted step and its note');
  const stepSeries = await page.evaluate(() => {
    const c = window.groveDashboard.charts['step-chart'];
    return c ? c.series.map((x) => x.label) : [];
  });
  check(stepSeries.includes('measured') && stepSeries.includes('predicted'),
    `the step-time chart draws measured and predicted (${stepSeries.join(', ')})`);
  const stepSummary = await page.textContent('#step-summary');
  check(/ms measured, [\d,.]+ ms predicted \(measured [+-]\d+ %\)/.test(stepSummary),
    `the step-time summary: "${stepSummary}"`);
  result.step_time = stepSummary;
  const config = await page.textContent('#config');
  check(config.includes('"model"') && config.includes('d_model'), 'the config is shown');
  await page.screenshot({ path: join(outDir, 'dashboard.png'), fullPage: true });
  result.loss_points = [first, second];

  // 4. The MoE figures of the synthetic job.
  await page.evaluate((id) => { location.hash = 'job=' + id; }, moeJob);
  await page.waitForFunction((id) => document.querySelector('#job-title')?.textContent.includes(id), moeJob);
  await page.waitForFunction(() => Number(document.querySelector('#expert-heatmap').dataset.steps) > 0);
  const heat = await page.$eval('#expert-heatmap', (c) => {
    // The canvas must hold colour, not just the white background.
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let coloured = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 2]) ++coloured;
    return { steps: Number(c.dataset.steps), coloured };
  });
  check(heat.steps > 0 && heat.coloured > 100,
    `the expert-load heat map covers ${heat.steps} steps (${heat.coloured} coloured pixels)`);
  const layers = await page.$$eval('#moe-layer option', (o) => o.length);
  check(layers === 2, `the heat map offers 2 MoE layers (got ${layers})`);
  await page.waitForFunction(() => Number(document.querySelector('#a2a-chart').dataset.points) > 0);
  const a2a = await page.textContent('#a2a-summary');
  check(/LSH saved 40\.0 %/.test(a2a), `all-to-all with/without LSH: "${a2a}"`);
  const a2aLast = await page.textContent('#a2a-last');
  check(/LSH saved 40\.0 %/.test(a2aLast), `the last step's all-to-all: "${a2aLast}"`);
  const mfu = await page.$eval('#mfu-chart', (e) => Number(e.dataset.points));
  check(mfu > 0, `MFU is plotted (${mfu} points)`);
  const valPoints = await page.evaluate(() =>
    window.groveDashboard.charts['loss-chart'].data[2].filter((v) => v !== null).length);
  check(valPoints > 0, `validation loss is plotted (${valPoints} points)`);
  await page.screenshot({ path: join(outDir, 'dashboard-moe.png'), fullPage: true });

  check(consoleErrors.length === 0, `no script errors (${consoleErrors.join(' | ')})`);
  console.log(JSON.stringify(result));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
