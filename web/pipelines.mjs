// Builds every pipeline the program can create in headless Chromium's WebGPU (Dawn, Tint, and
// SwiftShader where there is no GPU): each shader module through Tint, then each entry point
// with each of its sets of pipeline constants as a compute pipeline, with the device at
// WebGPU's default limits (what the page gets). The list comes from the shader-language test
// (`UNET_WGPU_PIPELINES=FILE cargo test --test shader_languages`). Prints what it covered, the
// slowest pipelines, and every error; exits non-zero on any.
//
// node pipelines.mjs --pipelines FILE [--skip SHADER::ENTRY[,...]] [--timeout S]
//
// --skip: entry points not to build here (each with every constant set), for those the
// adapter is known not to build in reasonable time; they are counted and named as skipped.

import { readFile } from 'node:fs/promises';
import { chromium, finish, flags, serve } from './chromium.mjs';

const args = flags();
const timeout = Number(args.timeout ?? 1500) * 1000;
const { shaders, pipelines } = JSON.parse(await readFile(args.pipelines, 'utf8'));
const skip = new Set((args.skip ?? '').split(',').filter((s) => s));
const key = (p) => `${p.shader}::${p.entry}`;
for (const s of skip) {
  if (!pipelines.some((p) => key(p) === s)) throw new Error(`--skip ${s}: no such entry point in ${args.pipelines}`);
}
const build = pipelines.filter((p) => !skip.has(key(p)));

// An empty page: the pipelines are built from its script context.
const { server, origin } = await serve((_, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html>'));
const browser = await chromium(timeout);
const failures = [];
await finish(async () => {
  const page = await browser.newPage();
  await page.goto(`${origin}/`);
  // The device and one module a shader, each module's messages from Tint.
  const opened = await page.evaluate(async (sources) => {
    const adapter = await navigator.gpu?.requestAdapter();
    if (!adapter) return { error: 'no WebGPU adapter' };
    const device = await adapter.requestDevice();
    window.lost = null;
    device.lost.then((l) => { window.lost = `${l.reason}: ${l.message}`; });
    window.device = device;
    window.modules = {};
    const messages = [];
    for (const [name, code] of Object.entries(sources)) {
      window.modules[name] = device.createShaderModule({ label: name, code });
      for (const m of (await window.modules[name].getCompilationInfo()).messages) {
        messages.push(`shaders/${name}.wgsl:${m.lineNum}:${m.linePos}: ${m.type}: ${m.message}`);
      }
    }
    const info = adapter.info ?? {};
    return { adapter: [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' / '), messages };
  }, shaders);
  if (opened.error) throw new Error(opened.error);
  console.log(`${await browser.version()}, adapter: ${opened.adapter || '(no description)'}`);
  failures.push(...opened.messages);

  // The pipelines, one at a time (so that each one's time is its own), in batches of one
  // evaluation each.
  const started = Date.now();
  const times = [];
  for (let i = 0; i < build.length; i += 25) {
    const batch = build.slice(i, i + 25);
    const results = await page.evaluate(async (batch) => {
      const out = [];
      for (const p of batch) {
        if (window.lost) return out;
        window.building = `${p.shader}::${p.entry} ${JSON.stringify(p.constants)}`;
        const t0 = performance.now();
        window.device.pushErrorScope('validation');
        let error = null;
        try {
          await window.device.createComputePipelineAsync({
            label: `${p.shader}::${p.entry}`,
            layout: 'auto',
            compute: { module: window.modules[p.shader], entryPoint: p.entry, constants: p.constants },
          });
        } catch (e) {
          error = String(e?.message ?? e);
        }
        const scoped = await window.device.popErrorScope();
        out.push({ ms: performance.now() - t0, error: error ?? scoped?.message ?? null });
      }
      return out;
    }, batch).catch(async (e) => {
      throw new Error(`${e?.message ?? e} while building ${await page.evaluate(() => window.building)}`);
    });
    if ((i / 25) % 20 === 19) console.log(`  ${i + batch.length} built, ${((Date.now() - started) / 1000).toFixed(0)} s`);
    results.forEach((r, j) => {
      const p = batch[j];
      times.push({ p, ms: r.ms });
      if (r.error) failures.push(`${key(p)} ${JSON.stringify(p.constants)}: ${r.error}`);
    });
    const lost = await page.evaluate(() => window.lost);
    if (lost) {
      const p = batch[results.length];
      failures.push(`the device was lost (${lost}) while building ${key(p)} ${JSON.stringify(p.constants)}`);
      break;
    }
    if (Date.now() - started > timeout) {
      failures.push(`stopped after ${timeout / 1000} s with ${build.length - times.length} pipelines unbuilt`);
      break;
    }
  }
  const seconds = (Date.now() - started) / 1000;

  const entries = new Set(pipelines.map(key));
  const built = new Set(times.map((t) => key(t.p)));
  const skipped = pipelines.length - build.length;
  console.log(`${Object.keys(shaders).length} shaders through Tint; ${built.size} of ${entries.size} entry points x ` +
    `${times.length} of ${pipelines.length} constant sets built as pipelines in ${seconds.toFixed(1)} s` +
    (skipped ? `; skipped (--skip): ${[...skip].join(', ')} (${skipped} sets)` : ''));
  const byEntry = new Map();
  for (const t of times) byEntry.set(key(t.p), (byEntry.get(key(t.p)) ?? 0) + t.ms);
  const slowest = [...byEntry].sort((a, b) => b[1] - a[1]).slice(0, 5);
  console.log(`most time: ${slowest.map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)} s`).join(', ')}`);
  const worst = times.reduce((w, t) => (t.ms > w.ms ? t : w), { ms: 0 });
  if (worst.p) console.log(`slowest pipeline: ${key(worst.p)} ${JSON.stringify(worst.p.constants)} ${(worst.ms / 1000).toFixed(2)} s`);
}, { browser, server }, failures, 'every pipeline built');
