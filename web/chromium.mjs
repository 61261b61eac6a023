// What web/test.mjs and web/pipelines.mjs share: their command-line flags, a server on
// 127.0.0.1 (WebGPU needs a secure context, which localhost is), headless Chromium with
// WebGPU (SwiftShader where there is no GPU), and the end of a run: close both, print the
// failures and exit non-zero if there are any.

import { createServer } from 'node:http';
import puppeteer from 'puppeteer-core';

/** `--name value` pairs of the command line, as an object. */
export const flags = () => Object.fromEntries(process.argv.slice(2).reduce((pairs, a, i, all) =>
  (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []));

/** A server on 127.0.0.1 answering with `handle(req, res)`; resolves to `{ server, origin }`. */
export async function serve(handle) {
  const server = createServer(handle);
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Headless Chromium (`$CHROMIUM`, else /usr/bin/chromium) with WebGPU on. */
export function chromium(timeoutMs, extraArgs = []) {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--headless=new', '--enable-unsafe-webgpu', ...extraArgs],
    protocolTimeout: timeoutMs + 60_000,
  });
}

/**
 * Runs `work()`, then closes `browser` and `server`. A throw counts as a failure. Prints the
 * failures (at most 50) and exits with 1 if there are any; else prints `passed`.
 */
export async function finish(work, { browser, server }, failures, passed) {
  try {
    await work();
  } catch (e) {
    failures.push(String(e?.message ?? e));
  } finally {
    await browser.close();
    server.close();
  }
  if (failures.length > 0) {
    console.log(`FAILED (${failures.length}):\n  ${failures.slice(0, 50).join('\n  ')}`);
    process.exit(1);
  }
  console.log(passed);
}
