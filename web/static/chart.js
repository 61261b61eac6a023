// Line charts on a canvas: axes with round ticks, one line per series, a legend.
// drawChart(canvas, { series: [{ name, colour, points: [[x, y], ...] }], xLabel, yLabel, yMin, yMax, xWhole })
// (xWhole: ticks on whole numbers only, for epochs)

const PAD = { left: 56, right: 12, top: 12, bottom: 40 };

// About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).
function ticks(lo, hi, count, whole = false) {
  const raw = Math.max((hi - lo) / count, whole ? 1 : 0);
  if (!(raw > 0)) return [lo];
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(1) : String(+v.toPrecision(4));
}

export function drawChart(canvas, { series, xLabel, yLabel, yMin, yMax, xWhole }) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  const points = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  ctx.font = '12px sans-serif';
  ctx.fillStyle = '#555';
  if (points.length === 0) {
    ctx.fillText('no data yet', width / 2 - 30, height / 2);
    return;
  }
  let [x0, x1] = [Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0]))];
  let [y0, y1] = [yMin ?? Math.min(...points.map((p) => p[1])), yMax ?? Math.max(...points.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const plot = { w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * plot.w;
  const sy = (y) => PAD.top + (1 - (y - y0) / (y1 - y0)) * plot.h;

  ctx.strokeStyle = '#e4e4e4';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const y of ticks(y0, y1, 5)) {
    ctx.beginPath();
    ctx.moveTo(PAD.left, sy(y));
    ctx.lineTo(width - PAD.right, sy(y));
    ctx.stroke();
    ctx.fillText(label(y), PAD.left - 6, sy(y));
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (const x of ticks(x0, x1, 6, xWhole)) ctx.fillText(label(x), sx(x), height - PAD.bottom + 6);
  ctx.fillText(xLabel, PAD.left + plot.w / 2, height - 16);
  ctx.save();
  ctx.translate(14, PAD.top + plot.h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(yLabel, 0, -6);
  ctx.restore();
  ctx.strokeStyle = '#888';
  ctx.strokeRect(PAD.left, PAD.top, plot.w, plot.h);

  ctx.lineWidth = 2;
  for (const s of series) {
    const finite = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    ctx.strokeStyle = s.colour;
    ctx.fillStyle = s.colour;
    ctx.beginPath();
    finite.forEach(([x, y], i) => (i === 0 ? ctx.moveTo(sx(x), sy(y)) : ctx.lineTo(sx(x), sy(y))));
    ctx.stroke();
    if (finite.length < 30) for (const [x, y] of finite) ctx.fillRect(sx(x) - 2, sy(y) - 2, 4, 4);
  }
  ctx.textAlign = 'left';
  ctx.textBaseline = 'middle';
  series.forEach((s, i) => {
    const y = PAD.top + 12 + i * 16;
    ctx.fillStyle = s.colour;
    ctx.fillRect(width - PAD.right - 120, y - 5, 14, 10);
    ctx.fillStyle = '#222';
    ctx.fillText(s.name, width - PAD.right - 100, y);
  });
}
