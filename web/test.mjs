// Drives the page in headless Chromium over the DevTools protocol (puppeteer-core): serves
// web/dist on 127.0.0.1, trains the run given in the query string with one click, and compares
// what the page computed with a native run of the same configuration (its --trace steps.csv and
// history.csv); then runs "compare losses" briefly (three losses, three steps each) and checks
// that each loss gets its curve. web/test.sh runs it; it prints the figures and exits non-zero
// on any failure.
//
// node test.mjs --dist DIR --native DIR --query QUERY --screenshot FILE [--tolerance REL]

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import puppeteer from 'puppeteer-core';

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));
const tolerance = Number(args.tolerance ?? 1e-3);
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };

// The page's own server: the only origin the page may reach.
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  try {
    const body = await readFile(join(args.dist, path.endsWith('/') ? path + 'index.html' : path));
    res.writeHead(200, { 'content-type': TYPES[extname(path) || '.html'] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--headless=new', '--enable-unsafe-webgpu', '--window-size=1240,1900'],
  protocolTimeout: 600_000,
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1240, height: 1900 });
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) foreign.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`page console: ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.goto(`${origin}/?${args.query}`, { waitUntil: 'load' });
  await page.waitForFunction(() => window.unet && (window.unet.adapter || window.unet.error), { timeout: 60_000 });
  const adapter = await page.evaluate(() => window.unet.adapter ?? `none: ${window.unet.error}`);
  console.log(`page adapter: ${adapter}`);
  check(!(await page.evaluate(() => window.unet.error)), 'the page opened a WebGPU device');

  const started = Date.now();
  await page.click('#train');
  // Poll while it trains: each answer needs the page's event loop, so progress seen across
  // polls shows that the page stays live between steps.
  let livePolls = 0;
  let lastSteps = 0;
  for (;;) {
    const s = await page.evaluate(() => ({
      running: window.unet.running, error: window.unet.error,
      steps: window.unet.runs[0]?.steps.length ?? 0, status: document.getElementById('status').textContent,
    }));
    if (s.running && s.steps > lastSteps && lastSteps > 0) livePolls++;
    lastSteps = s.steps;
    if (!s.running && (s.steps > 0 || s.error)) break;
    if (Date.now() - started > Number(args.timeout ?? 480) * 1000) {
      failures.push(`the run did not finish within ${args.timeout ?? 480} s (last status: ${s.status})`);
      break;
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
  const run = await page.evaluate(() => ({ error: window.unet.error, ...window.unet.runs[0] }));
  const seconds = (Date.now() - started) / 1000;
  await page.screenshot({ path: args.screenshot, fullPage: true });
  check(!run.error, `the page trained without error (${run.error})`);

  // The native run of the same configuration.
  const csv = async (file) => (await readFile(join(args.native, file), 'utf8')).trim().split('\n').map((l) => l.split(','));
  const [header, ...rows] = await csv('out/history.csv');
  const history = rows.map((r) => Object.fromEntries(header.map((h, i) => [h, Number(r[i])])));
  const nativeLosses = (await csv('trace/steps.csv')).slice(1).map((r) => Number(r[2]));

  const losses = run.steps.map((s) => s.loss);
  const epochs = run.epochs;
  const rate = (losses.length - 1) / (run.steps.at(-1).seconds - run.steps[0].seconds);
  check(losses.length === nativeLosses.length, `the page ran ${losses.length} steps, natively ${nativeLosses.length}`);
  check(epochs.length === history.length, `the page ran ${epochs.length} epochs, natively ${history.length}`);
  const worst = losses.reduce((w, l, i) => {
    const rel = Math.abs(l - nativeLosses[i]) / Math.abs(nativeLosses[i]);
    return rel > w.rel ? { rel, step: i + 1 } : w;
  }, { rel: 0, step: 0 });
  check(worst.rel <= tolerance, `step ${worst.step}: loss differs from native by ${worst.rel.toExponential(2)} (> ${tolerance})`);
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const quarter = Math.max(1, Math.floor(losses.length / 4));
  const [before, after] = [mean(losses.slice(0, quarter)), mean(losses.slice(-quarter))];
  check(after < before, `the loss falls (first quarter of the steps ${before}, last quarter ${after})`);
  const last = epochs.at(-1);
  check(Number.isFinite(last?.valMeanIou) && last.valMeanIou > 0, `a validation mIoU appears (${last?.valMeanIou})`);
  check(last?.perClass.length === 6 && last.perClass.some((c) => c.iou !== null), 'the per-class IoU table has its 6 classes');
  check(last?.predictions.length > 0, 'validation tiles with predictions are drawn');
  const shown = await page.evaluate(() => [document.querySelectorAll('#iou-table tbody tr').length, document.getElementById('log').textContent]);
  check(shown[0] === 6 && shown[1].includes('val_mean_iou'), 'the IoU table and the Keras-style lines are on the page');
  const epochDiffs = epochs.map((e, i) => [Math.abs(e.loss - history[i].loss) / history[i].loss,
    Math.abs(e.valMeanIou - history[i].val_mean_iou)]);
  const worstEpochLoss = Math.max(...epochDiffs.map((d) => d[0]));
  const worstMiou = Math.max(...epochDiffs.map((d) => d[1]));
  check(worstEpochLoss <= tolerance, `epoch losses differ from native by up to ${worstEpochLoss.toExponential(2)} (> ${tolerance})`);
  check(worstMiou <= 0.01, `val mIoU differs from native by up to ${worstMiou.toFixed(4)} (> 0.01)`);
  check(livePolls >= 2, `the page answered while it trained (${livePolls} polls saw new steps; want 2 or more)`);

  // "Compare losses": the losses ticked by default, one after another, a curve each.
  await page.evaluate(() => {
    const form = document.getElementById('options');
    [form.elements.epochs.value, form.elements.maxSteps.value] = ['1', '3'];
  });
  await page.click('#compare');
  await page.waitForFunction(() => !window.unet.running && window.unet.runs.length > 0 &&
    (window.unet.error || window.unet.runs.every((r) => r.epochs.length === 1)), { timeout: 300_000, polling: 500 });
  const compared = await page.evaluate(() => ({
    error: window.unet.error, runs: window.unet.runs.map((r) => [r.loss, r.steps.length, r.epochs.length]),
  }));
  check(!compared.error && compared.runs.length >= 2 && compared.runs.every(([, steps, e]) => steps === 3 && e === 1) &&
    new Set(compared.runs.map((r) => r[0])).size === compared.runs.length,
  `compare losses trains each ticked loss in turn (${JSON.stringify(compared)})`);
  check(foreign.length === 0, `requests left the page's server: ${foreign.join(', ')}`);

  console.log(`steps: ${losses.length} in ${epochs.length} epochs; page run ${seconds.toFixed(1)} s, ` +
    `${rate.toFixed(2)} steps/s after the first step (the first compiles the shaders)`);
  const perSecond = (n, secs) => (n / secs.reduce((a, b) => a + b, 0)).toFixed(2);
  console.log(`steps/s over the epochs (validation and the first step's shader compilation included): ` +
    `page ${perSecond(losses.length, epochs.map((e) => e.seconds))}, ` +
    `native ${perSecond(nativeLosses.length, history.map((h) => h.seconds))}`);
  console.log(`loss: first quarter of the steps ${before.toFixed(4)}, last quarter ${after.toFixed(4)} ` +
    `(step 1 ${losses[0].toFixed(4)}, step ${losses.length} ${losses.at(-1).toFixed(4)})`);
  console.log(`val mIoU after epoch ${last.epoch}: page ${last.valMeanIou.toFixed(4)}, native ${history.at(-1).val_mean_iou.toFixed(4)}`);
  console.log(`agreement with native: loss per step within ${worst.rel.toExponential(2)} relative (worst at step ${worst.step}; ` +
    `tolerance ${tolerance}), epoch loss within ${worstEpochLoss.toExponential(2)}, val mIoU within ${worstMiou.toExponential(2)}`);
  console.log(`compare losses: ${compared.runs.map((r) => r[0]).join(', ')} (3 steps each)`);
  console.log(`page live while training: ${livePolls} polls saw new steps; requests outside ${origin}: ${foreign.length}`);
  console.log(`screenshot: ${args.screenshot}`);
} finally {
  await browser.close();
  server.close();
}
if (failures.length > 0) {
  console.log(`FAILED:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
console.log('web test passed');
