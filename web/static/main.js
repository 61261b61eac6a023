// The page: reads the form, runs the wasm trainer (pkg/unet_wgpu_web.js), and draws what it
// reports. Form fields may be preset from the URL (?epochs=2&base=8...).
// window.unet holds the state of the page for scripts (web/test.mjs reads it):
// { adapter, tuning (the tuned kernels' tile sizes), running, error,
//   runs: [{ loss, info, steps: [...], epochs: [...] }] }.

import init, { Lab } from './pkg/unet_wgpu_web.js';
import { drawChart } from './chart.js';

const $ = (id) => document.getElementById(id);
const form = $('options');
const state = { adapter: null, tuning: null, running: false, error: null, runs: [] };
window.unet = state;
let stopRequested = false;

// One colour per loss, the same in every chart.
const COLOURS = {
  ce: '#1f77b4', dice: '#d62728', focal: '#2ca02c', 'dice+ce': '#9467bd',
  'dice+focal': '#ff7f0e', tversky: '#8c564b', 'focal-tversky': '#e377c2', 'unified-focal': '#17becf',
};

function showMessage(text) {
  $('message').textContent = text;
  $('message').hidden = false;
}

function log(line) {
  $('log').textContent += line + '\n';
}

// The form's choices (the field names are those Lab.train reads).
function options(loss) {
  const data = new FormData(form);
  const o = {};
  for (const name of ['epochs', 'batch', 'lr', 'seed', 'tiles', 'tileSize', 'patch', 'base', 'depth', 'maxSteps']) {
    o[name] = Number(data.get(name));
  }
  o.kernels = data.get('kernels');
  o.loss = loss ?? data.get('loss');
  return o;
}

function presetFromUrl() {
  for (const [name, value] of new URLSearchParams(location.search)) {
    const field = form.elements.namedItem(name);
    if (field && 'value' in field) field.value = value;
  }
}

function redraw() {
  const series = (pick) => state.runs.map((r) => ({ name: r.loss, colour: COLOURS[r.loss], points: pick(r) }));
  drawChart($('loss-chart'), {
    series: series((r) => r.steps.map((s) => [s.globalStep, s.loss])),
    xLabel: 'step', yLabel: 'loss',
  });
  drawChart($('miou-chart'), {
    series: series((r) => r.epochs.map((e) => [e.epoch, e.valMeanIou])),
    xLabel: 'epoch', yLabel: 'val mIoU', yMin: 0, yMax: 1, xWhole: true,
  });
}

function showClasses(perClass) {
  const body = $('iou-table').tBodies[0];
  body.replaceChildren(...perClass.map((c) => {
    const row = document.createElement('tr');
    const cells = [c.name, c.iou === null ? 'absent' : c.iou.toFixed(4), c.dice === null ? 'absent' : c.dice.toFixed(4)];
    for (const text of cells) row.insertCell().textContent = text;
    row.cells[0].style.borderLeft = `12px solid ${c.colour}`;
    return row;
  }));
}

function showPredictions(pictures) {
  if (pictures.length === 0) return;
  const canvas = $('tiles');
  const scale = Math.max(1, Math.floor(384 / pictures[0].width));
  canvas.width = pictures[0].width * scale;
  canvas.height = pictures.reduce((h, p) => h + p.height * scale + 4, 0) - 4;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  const tile = document.createElement('canvas');
  let y = 0;
  for (const p of pictures) {
    [tile.width, tile.height] = [p.width, p.height];
    tile.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(p.rgba), p.width, p.height), 0, 0);
    ctx.drawImage(tile, 0, y, p.width * scale, p.height * scale);
    y += p.height * scale + 4;
  }
}

function setRunning(running) {
  state.running = running;
  $('train').disabled = running;
  $('compare').disabled = running;
  $('stop').disabled = !running;
}

// One run of `loss`; resolves when it ends (or stops), rejects on an error.
async function run(lab, loss) {
  const opts = options(loss);
  const record = { loss, info: null, steps: [], epochs: [] };
  state.runs.push(record);
  $('command').textContent = 'The same run natively: ' + lab.commandLine(opts);
  log(`== ${loss}`);
  let firstStepSeconds = null;
  await lab.train(opts, {
    onStart(info) {
      record.info = info;
      log(`${info.trainPatches} training patches, ${info.valPatches} validation patches; ` +
        `U-Net with ${info.parameters} parameters; ${info.stepsPerEpoch} steps an epoch`);
    },
    onStep(step) {
      record.steps.push(step);
      if (firstStepSeconds === null) firstStepSeconds = step.seconds;
      const rate = step.globalStep > 1 ? (step.globalStep - 1) / (step.seconds - firstStepSeconds) : null;
      $('status').textContent = `${loss}: epoch ${step.epoch}/${opts.epochs}, step ${step.step}/${record.info.stepsPerEpoch}` +
        ` - loss ${step.loss.toFixed(4)} - lr ${step.lr.toExponential(2)}` +
        (rate ? ` - ${rate.toFixed(2)} steps/s after the first` : ' - compiling the shaders');
      redraw();
      return !stopRequested;
    },
    onEpoch(epoch) {
      record.epochs.push(epoch);
      log(`Epoch ${epoch.epoch}/${opts.epochs}\n${epoch.kerasLine}`);
      showClasses(epoch.perClass);
      showPredictions(epoch.predictions);
      redraw();
      return !stopRequested;
    },
  });
}

async function runAll(lab, losses) {
  stopRequested = false;
  state.error = null;
  state.runs = [];
  $('log').textContent = '';
  setRunning(true);
  try {
    for (const loss of losses) {
      if (stopRequested) break;
      await run(lab, loss);
    }
    $('status').textContent = stopRequested ? 'Stopped.' : `Done: ${losses.join(', ')}.`;
  } catch (e) {
    state.error = String(e?.message ?? e);
    showMessage(`Training stopped with an error: ${state.error}`);
    $('status').textContent = 'Error.';
  } finally {
    setRunning(false);
  }
}

async function main() {
  presetFromUrl();
  redraw();
  if (!navigator.gpu) {
    state.error = 'no WebGPU';
    $('adapter').textContent = 'No WebGPU adapter.';
    showMessage('This browser has no WebGPU (navigator.gpu is missing), so it cannot train here. ' +
      'Use a recent Chrome or Edge (113 or later), Safari 26, or Firefox 141 on Windows; ' +
      'on Linux, Chrome needs the flag --enable-unsafe-webgpu. The page must be served over http://localhost or https.');
    return;
  }
  // The browser's own words for the adapter (wgpu passes on only the description).
  const probe = await navigator.gpu.requestAdapter();
  const i = probe?.info ?? {};
  const named = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(' ');
  await init();
  let lab;
  try {
    lab = await Lab.open();
  } catch (e) {
    state.error = String(e?.message ?? e);
    $('adapter').textContent = 'No WebGPU adapter.';
    showMessage(`WebGPU is present but gave no device: ${state.error}`);
    return;
  }
  state.adapter = `${named || 'unnamed adapter'}: ${lab.adapter}`;
  state.tuning = lab.tuning;
  $('adapter').textContent = `Adapter: ${state.adapter}`;
  $('train').onclick = () => runAll(lab, [new FormData(form).get('loss')]);
  $('compare').onclick = () => {
    const losses = [...$('compare-losses').querySelectorAll('input:checked')].map((c) => c.value);
    if (losses.length < 2) showMessage('Tick two or more losses to compare.');
    else runAll(lab, losses);
  };
  $('stop').onclick = () => { stopRequested = true; };
  setRunning(false);
}

main().catch((e) => {
  state.error = String(e?.message ?? e);
  showMessage(`The page failed to start: ${state.error}`);
});
