// The job's loss chart: training loss at each logged step, validation loss at each evaluation (every
// checkpoint), and the learning rate on a second axis. uPlot (vendored, see vendor/uplot/README.md) is loaded
// on the first chart, so pages without one never fetch it.

import { h } from "./dom.js";

const VENDOR = "/ui/assets/vendor/uplot";
let library = null;

function loadUplot() {
  library ??= new Promise((resolve, reject) => {
    document.head.append(h("link", { rel: "stylesheet", href: `${VENDOR}/uPlot.min.css` }));
    const script = h("script", { src: `${VENDOR}/uPlot.iife.min.js` });
    script.addEventListener("load", () => resolve(window.uPlot));
    script.addEventListener("error", () => reject(new Error("The chart library could not be loaded.")));
    document.head.append(script);
  });
  return library;
}

const COLORS = { train: "#2563eb", valid: "#ea580c", lr: "#94a3b8" };

/** The step-keyed series behind the chart, fed by events and checkpoints. */
export class LossSeries {
  constructor() {
    this.train = new Map();
    this.valid = new Map();
    this.learningRate = new Map();
  }

  /** A metrics event: `train_loss` (and `learning_rate`) from a logging step, `eval_loss` from an evaluation. */
  addEvent(event) {
    const data = event.data;
    if (event.type !== "metrics" || !data || data.step === undefined) return false;
    if (typeof data.train_loss === "number") this.train.set(data.step, data.train_loss);
    if (typeof data.learning_rate === "number") this.learningRate.set(data.step, data.learning_rate);
    if (typeof data.eval_loss === "number") this.valid.set(data.step, data.eval_loss);
    return true;
  }

  /** A checkpoint's `valid_loss` (the evaluation at its step), for checkpoints whose event was not seen. */
  addCheckpoint(checkpoint) {
    const loss = checkpoint.metrics?.valid_loss;
    if (typeof loss === "number" && !this.valid.has(checkpoint.step_number))
      this.valid.set(checkpoint.step_number, loss);
  }

  /** uPlot's aligned columns: [steps, train loss, validation loss, learning rate] (null where a step has none). */
  columns() {
    const steps = [...new Set([...this.train.keys(), ...this.valid.keys(), ...this.learningRate.keys()])].sort(
      (a, b) => a - b,
    );
    const column = (map) => steps.map((step) => (map.has(step) ? map.get(step) : null));
    return [steps, column(this.train), column(this.valid), column(this.learningRate)];
  }
}

/** 0.00125 -> "1.25e−3", 0.002 -> "2e−3". */
function scientific(value) {
  if (value === 0) return "0";
  const [mantissa, exponent] = value.toExponential(2).split("e");
  return `${Number(mantissa)}e${exponent.replace("-", "−").replace("+", "")}`;
}

// Steps are whole numbers: the step axis ticks at these spacings only.
const STEP_INCREMENTS = [
  1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6,
];

function options(width, points, logScale) {
  const axis = { stroke: "#64748b", grid: { stroke: "#eef2f7", width: 1 }, ticks: { stroke: "#e2e8f0", width: 1 } };
  return {
    width,
    height: 300,
    cursor: { drag: { x: true, y: false }, points: { size: 7 } },
    scales: { x: { time: false }, loss: logScale ? { distr: 3, log: 10 } : { auto: true }, lr: { auto: true } },
    legend: { live: true },
    axes: [
      { ...axis, label: "step", labelSize: 24, incrs: STEP_INCREMENTS },
      { ...axis, scale: "loss", label: "loss", labelSize: 24, size: 56 },
      {
        ...axis,
        scale: "lr",
        side: 1,
        label: "learning rate",
        labelSize: 24,
        size: 76,
        grid: { show: false },
        values: (_u, ticks) => ticks.map(scientific),
      },
    ],
    series: [
      { label: "step" },
      {
        label: "train loss",
        scale: "loss",
        stroke: COLORS.train,
        width: 2,
        spanGaps: true,
        points: { show: points < 80, size: 5, fill: COLORS.train },
        value: (_u, v) => (v == null ? "–" : v.toFixed(4)),
      },
      {
        label: "validation loss",
        scale: "loss",
        stroke: COLORS.valid,
        width: 2,
        spanGaps: true,
        points: { show: true, size: 8, fill: "#fff" },
        value: (_u, v) => (v == null ? "–" : v.toFixed(4)),
      },
      {
        label: "learning rate",
        scale: "lr",
        stroke: COLORS.lr,
        width: 1.5,
        dash: [5, 4],
        spanGaps: true,
        points: { show: false },
        value: (_u, v) => (v == null ? "–" : scientific(v)),
      },
    ],
  };
}

/** A chart in `container` that redraws from `series` on update(); `container.uplot` is the uPlot instance. */
export class LossChart {
  constructor(container, series) {
    this.container = container;
    this.series = series;
    this.plot = null;
    this.logScale = false;
    this.empty = h("div.chart-empty", {}, "No metrics yet: the chart fills in as the job trains.");
    this.container.append(this.empty);
    this.resize = new ResizeObserver(() => this.plot?.setSize({ width: this.width(), height: 300 }));
    this.resize.observe(container);
    this.ready = loadUplot().then(
      () => this.update(),
      (error) => this.container.replaceChildren(h("div.chart-empty", {}, error.message)),
    );
  }

  width() {
    return Math.max(280, this.container.clientWidth);
  }

  update() {
    const columns = this.series.columns();
    const count = this.series.train.size;
    this.container.dataset.trainPoints = String(count);
    this.empty.hidden = columns[0].length > 0;
    if (!window.uPlot || !columns[0].length) return;
    // Points are drawn while they are few; past that the line reads better. Rebuilt once when crossing.
    const dense = count >= 80;
    if (this.plot && this.plot.dense !== dense) this.destroyPlot();
    if (this.plot) {
      this.plot.setData(columns);
      return;
    }
    this.plot = new window.uPlot(options(this.width(), count, this.logScale), columns, this.container);
    this.plot.dense = dense;
    this.container.uplot = this.plot;
  }

  /** Loss on a logarithmic axis (the late steps of a run whose loss fell by orders of magnitude), or linear. */
  setLogScale(on) {
    this.logScale = on;
    this.destroyPlot();
    this.update();
  }

  destroyPlot() {
    this.plot?.destroy();
    this.plot = null;
  }

  destroy() {
    this.resize.disconnect();
    this.destroyPlot();
  }
}
