// Drives the page in headless Chromium over the DevTools protocol (puppeteer-core): serves
// web/dist on 127.0.0.1 and trains the run given in the query string with one click.
//
// With --native DIR (web/test.sh): compares what the page computed with a native run of the
// same configuration (DIR/trace/steps.csv and DIR/out/history.csv). With --checks all (the
// default) it also checks what the page shows, then runs "compare losses" briefly (the losses
// ticked by default, three steps each) and checks that each loss gets its curve, and that a
// browser without WebGPU gets a message; --checks numbers compares the numbers only. Prints the
// figures; exits non-zero on any failure.
// Without --native: prints the page's figures only (a measurement).
//
// node test.mjs --dist DIR --query QUERY [--screenshot FILE] [--native DIR] [--checks all|numbers]
//   [--tolerance REL] [--timeout S]

import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { chromium, finish, flags, serve } from './chromium.mjs';

const args = flags();
const tolerance = Number(args.tolerance ?? 1e-3);
const allChecks = (args.checks ?? 'all') === 'all';
if (!['all', 'numbers'].includes(args.checks ?? 'all')) throw new Error(`--checks ${args.checks}: want all or numbers`);
const timeout = Number(args.timeout ?? 480) * 1000;
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

// The page's own server: the only origin the page may reach.
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };
const { server, origin } = await serve(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  try {
    const body = await readFile(join(args.dist, path.endsWith('/') ? path + 'index.html' : path));
    res.writeHead(200, { 'content-type': TYPES[extname(path) || '.html'] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});

// Click Train and wait for the run to end, polling the page: each answer needs the page's
// event loop, so progress seen across polls shows that the page stays live between steps.
async function train(page) {
  const started = Date.now();
  await page.click('#train');
  let [livePolls, lastSteps] = [0, 0];
  for (;;) {
    const s = await page.evaluate(() => ({
      running: window.unet.running, error: window.unet.error,
      steps: window.unet.runs[0]?.steps.length ?? 0, status: document.getElementById('status').textContent,
    }));
    if (s.running && s.steps > lastSteps && lastSteps > 0) livePolls++;
    lastSteps = s.steps;
    if (!s.running && (s.steps > 0 || s.error)) break;
    if (Date.now() - started > timeout) {
      failures.push(`the run did not finish within ${timeout / 1000} s (last status: ${s.status})`);
      break;
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
  const run = await page.evaluate(() => ({ error: window.unet.error, ...window.unet.runs[0] }));
  return { run, livePolls, seconds: (Date.now() - started) / 1000 };
}

// The page against the native run of the same configuration; returns the lines to print.
async function compareWithNative(run, dir) {
  const csv = async (file) => (await readFile(join(dir, file), 'utf8')).trim().split('\n').map((l) => l.split(','));
  const [header, ...rows] = await csv('out/history.csv');
  const history = rows.map((r) => Object.fromEntries(header.map((h, i) => [h, Number(r[i])])));
  const native = (await csv('trace/steps.csv')).slice(1).map((r) => Number(r[2]));
  const losses = run.steps.map((s) => s.loss);
  check(losses.length === native.length, `the page ran ${losses.length} steps, natively ${native.length}`);
  check(run.epochs.length === history.length, `the page ran ${run.epochs.length} epochs, natively ${history.length}`);
  const worst = losses.reduce((w, l, i) => {
    const rel = Math.abs(l - native[i]) / Math.abs(native[i]);
    return rel > w.rel ? { rel, step: i + 1 } : w;
  }, { rel: 0, step: 0 });
  check(worst.rel <= tolerance, `step ${worst.step}: loss differs from native by ${worst.rel.toExponential(2)} (> ${tolerance})`);
  const epochLoss = Math.max(...run.epochs.map((e, i) => Math.abs(e.loss - history[i].loss) / history[i].loss));
  const miou = Math.max(...run.epochs.map((e, i) => Math.abs(e.valMeanIou - history[i].val_mean_iou)));
  check(epochLoss <= tolerance, `epoch losses differ from native by up to ${epochLoss.toExponential(2)} (> ${tolerance})`);
  check(miou <= 0.01, `val mIoU differs from native by up to ${miou.toFixed(4)} (> 0.01)`);
  return [
    `native: ${(native.length / sum(history.map((h) => h.seconds))).toFixed(2)} steps/s over the epochs; ` +
      `val mIoU after epoch ${history.length} ${history.at(-1).val_mean_iou.toFixed(4)}`,
    `agreement with native: loss per step within ${worst.rel.toExponential(2)} relative (worst at step ${worst.step}; ` +
      `tolerance ${tolerance}), epoch loss within ${epochLoss.toExponential(2)}, val mIoU within ${miou.toExponential(2)}`,
  ];
}

// "Compare losses": the losses ticked by default, one after another, three steps each.
async function compareLosses(page) {
  await page.evaluate(() => {
    const form = document.getElementById('options');
    [form.elements.epochs.value, form.elements.maxSteps.value] = ['1', '3'];
  });
  await page.click('#compare');
  await page.waitForFunction(() => !window.unet.running && window.unet.runs.length > 0 &&
    (window.unet.error || window.unet.runs.every((r) => r.epochs.length === 1)), { timeout, polling: 500 });
  const c = await page.evaluate(() => ({
    error: window.unet.error, runs: window.unet.runs.map((r) => [r.loss, r.steps.length, r.epochs.length]),
  }));
  check(!c.error && c.runs.length >= 2 && c.runs.every(([, steps, e]) => steps === 3 && e === 1) &&
    new Set(c.runs.map((r) => r[0])).size === c.runs.length, `compare losses trains each ticked loss in turn (${JSON.stringify(c)})`);
  return `compare losses: ${c.runs.map((r) => r[0]).join(', ')} (3 steps each)`;
}

// The page in a browser without WebGPU (navigator.gpu removed before the page's scripts run).
async function withoutWebGpu(browser) {
  const page = await browser.newPage();
  await page.evaluateOnNewDocument(() => { delete Navigator.prototype.gpu; });
  await page.goto(`${origin}/`, { waitUntil: 'load' });
  await page.waitForFunction(() => window.unet?.error, { timeout: 30_000 });
  const [message, disabled] = await page.evaluate(() =>
    [document.getElementById('message').textContent, document.getElementById('train').disabled]);
  check(message.includes('has no WebGPU') && disabled, `a browser without WebGPU is told so (${message})`);
  await page.close();
  return `without WebGPU the page says: ${message.slice(0, 72)}...`;
}

const browser = await chromium(timeout, ['--window-size=1240,1900']);
await finish(async () => {
  const page = await browser.newPage();
  await page.setViewport({ width: 1240, height: 1900 });
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) foreign.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') console.log(`page console: ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.goto(`${origin}/?${args.query}`, { waitUntil: 'load' });
  await page.waitForFunction(() => window.unet && (window.unet.adapter || window.unet.error), { timeout: 60_000 });
  const [adapter, tuning] = await page.evaluate(() => [window.unet.adapter ?? `none: ${window.unet.error}`, window.unet.tuning]);
  console.log(`page adapter: ${adapter}`);
  if (args.query.includes('kernels=tuned')) {
    console.log(`page tile sizes: ${tuning}`);
    // SwiftShader (a fallback adapter, `Cpu`) cannot compile the register-tile convolutions.
    check(!adapter.includes('Cpu') || !tuning.includes('convolutions register tiles'),
      `a fallback adapter gets no register-tile convolutions (${tuning})`);
  }

  const { run, livePolls, seconds } = await train(page);
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  check(!run.error && run.steps?.length > 0, `the page trained without error (${run.error})`);
  if (failures.length > 0) throw new Error('no run to check');
  const losses = run.steps.map((s) => s.loss);
  const quarter = Math.max(1, Math.floor(losses.length / 4));
  const [before, after] = [mean(losses.slice(0, quarter)), mean(losses.slice(-quarter))];
  const last = run.epochs.at(-1);
  const rate = (losses.length - 1) / (run.steps.at(-1).seconds - run.steps[0].seconds);
  const lines = [
    `page: ${losses.length} steps in ${run.epochs.length} epochs, ${seconds.toFixed(1)} s; ` +
      `${(losses.length / sum(run.epochs.map((e) => e.seconds))).toFixed(2)} steps/s over the epochs ` +
      `(validation and the first step's shader compilation included), ${rate.toFixed(2)} steps/s after the first step`,
    `loss: mean of the first quarter of the steps ${before.toFixed(4)}, of the last quarter ${after.toFixed(4)} ` +
      `(step 1 ${losses[0].toFixed(4)}, step ${losses.length} ${losses.at(-1).toFixed(4)})`,
    `val mIoU after epoch ${last?.epoch}: ${last?.valMeanIou?.toFixed(4)}`,
  ];
  if (args.native && !allChecks) {
    lines.push(...await compareWithNative(run, args.native));
  } else if (args.native) {
    check(after < before, `the loss falls (first quarter of the steps ${before}, last quarter ${after})`);
    check(Number.isFinite(last?.valMeanIou) && last.valMeanIou > 0, `a validation mIoU appears (${last?.valMeanIou})`);
    check(last?.perClass.length === 6 && last.perClass.some((c) => c.iou !== null), 'the per-class IoU table has its 6 classes');
    check(last?.predictions.length > 0, 'validation tiles with predictions are drawn');
    const [rows, log] = await page.evaluate(() =>
      [document.querySelectorAll('#iou-table tbody tr').length, document.getElementById('log').textContent]);
    check(rows === 6 && log.includes('val_mean_iou'), 'the IoU table and the Keras-style lines are on the page');
    check(livePolls >= 2, `the page answered while it trained (${livePolls} polls saw new steps; want 2 or more)`);
    lines.push(...await compareWithNative(run, args.native), await compareLosses(page), await withoutWebGpu(browser));
  }
  check(foreign.length === 0, `requests left the page's server: ${foreign.join(', ')}`);
  lines.push(`page live while training: ${livePolls} polls saw new steps; requests outside ${origin}: ${foreign.length}`);
  if (args.screenshot) lines.push(`screenshot: ${args.screenshot}`);
  console.log(lines.join('\n'));
}, { browser, server }, failures, args.native ? 'web test passed' : 'measured');
