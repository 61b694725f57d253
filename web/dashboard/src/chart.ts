// A zoomable line chart (uPlot) whose data comes from the server already downsampled: a drag
// selects a step range and the chart asks the server for that range again, so detail appears;
// a double click (or "reset") goes back to the whole series.
import uPlot from "uplot";
import { describe, isAborted, isUnauthenticated } from "./api.js";
import { fail } from "./app.js";
import { type Child, fill, h } from "./dom.js";
import { num, step } from "./format.js";

export const COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5c940d"];

export interface StepRange {
  start: bigint;
  end: bigint;
}

export interface Loaded {
  /** x (steps) then one y array per series, aligned; null is a gap. */
  data: uPlot.AlignedData;
  labels: string[];
  caption: Child[];
  /** Exposed on the chart element as data-* (the numbers behind the caption, for tests). */
  attrs: Record<string, string>;
}

export type Loader = (range: StepRange | null, maxPoints: number, signal: AbortSignal) => Promise<Loaded>;

/** The points to ask for: about one per pixel of the plot, at least 1,000. */
export function pointsFor(width: number): number {
  const px = Math.round(width * (window.devicePixelRatio || 1));
  return Math.min(100_000, Math.max(1000, px - (px % 2)));
}

/** A gap (null) where a value cannot be drawn (NaN, ±Inf). */
export function drawable(values: number[]): (number | null)[] {
  return values.map((v) => (Number.isFinite(v) ? v : null));
}

export class Chart {
  readonly el: HTMLElement;
  private readonly plotEl = h("div", { class: "chart-plot" });
  private readonly captionEl = h("div", { class: "chart-caption" });
  private readonly resetEl = h("button", { type: "button", hidden: true, title: "show the whole series" }, "reset zoom");
  private plot: uPlot | null = null;
  private labels = "";
  private zoom: StepRange | null = null;
  private inflight: AbortController | null = null;
  private resize: ResizeObserver | null = null;

  constructor(
    title: Child | Child[],
    private readonly loader: Loader,
    private readonly signal: AbortSignal,
    attrs: Record<string, string> = {},
  ) {
    this.el = h("div", { class: "chart", ...attrs }, h("div", { class: "chart-head" }, h("span", { class: "chart-title" }, title), this.resetEl), this.plotEl, this.captionEl);
    this.resetEl.addEventListener("click", () => this.setZoom(null));
    signal.addEventListener("abort", () => this.destroy());
  }

  get zoomed(): boolean {
    return this.zoom !== null;
  }

  setZoom(range: StepRange | null): void {
    this.zoom = range;
    this.resetEl.hidden = range === null;
    void this.load();
  }

  /** Fetch (the zoomed range, or everything) and draw. A ``refresh`` of a drawn chart (a live
   * run's new points) keeps it as it is until the new points come: dimming it every few seconds
   * would make a live page blink. */
  async load(refresh = false): Promise<void> {
    this.inflight?.abort();
    const controller = new AbortController();
    this.inflight = controller;
    const started = performance.now();
    if (!(refresh && this.plot)) this.el.classList.add("loading");
    const width = this.width();
    const maxPoints = pointsFor(width);
    try {
      const loaded = await this.loader(this.zoom, maxPoints, controller.signal);
      if (controller.signal.aborted || this.signal.aborted) return;
      this.draw(loaded, width);
      const ms = performance.now() - started;
      fill(this.captionEl, ...loaded.caption, this.zoom ? ` · steps ${this.zoom.start}–${this.zoom.end}` : "");
      for (const [k, v] of Object.entries({ ...loaded.attrs, maxPoints: String(maxPoints), drawMs: ms.toFixed(0) })) {
        this.el.dataset[k] = v;
      }
      this.el.dataset.ready = "true";
    } catch (err) {
      if (isAborted(err) || controller.signal.aborted) return;
      if (isUnauthenticated(err)) fail(err);
      fill(this.captionEl, h("span", { class: "error" }, describe(err)));
    } finally {
      if (this.inflight === controller) this.el.classList.remove("loading");
    }
  }

  private width(): number {
    return Math.max(200, this.plotEl.clientWidth || this.el.clientWidth - 16 || 600);
  }

  private draw(loaded: Loaded, width: number): void {
    const labels = loaded.labels.join("\n");
    if (this.plot && labels === this.labels) {
      this.plot.setData(loaded.data);
      return;
    }
    this.plot?.destroy();
    this.labels = labels;
    const opts: uPlot.Options = {
      width,
      height: 220,
      scales: {
        x: { time: false },
        // A flat series gets a band around its value (uPlot's default would be 0-100).
        y: {
          range: (_u, min, max): uPlot.Range.MinMax =>
            min === max ? [min - (Math.abs(min) * 0.1 || 1), max + (Math.abs(max) * 0.1 || 1)] : uPlot.rangeNum(min, max, 0.1, true),
        },
      },
      axes: [
        { size: 30, values: (_u, splits) => splits.map((v) => step(v)) },
        { size: 56, values: (_u, splits) => splits.map((v) => num(v)) },
      ],
      series: [
        { label: "step" },
        ...loaded.labels.map((label, i) => ({
          label,
          stroke: COLORS[i % COLORS.length] ?? "#2457c5",
          width: 1.25,
          spanGaps: loaded.labels.length > 1, // compare: runs on one grid leave holes to bridge
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : num(v)),
        })),
      ],
      cursor: { drag: { x: true, y: false, setScale: false } },
      legend: { show: loaded.labels.length > 1 },
      hooks: {
        setSelect: [
          (u) => {
            const { left, width: w } = u.select;
            if (w < 3) return;
            const start = BigInt(Math.ceil(u.posToVal(left, "x")));
            const end = BigInt(Math.floor(u.posToVal(left + w, "x")));
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            if (end >= start) this.setZoom({ start, end });
          },
        ],
      },
    };
    this.plot = new uPlot(opts, loaded.data, this.plotEl);
    this.plot.over.addEventListener("dblclick", () => {
      if (this.zoom) this.setZoom(null);
    });
    this.resize?.disconnect();
    this.resize = new ResizeObserver(() => {
      const w = this.width();
      if (this.plot && Math.abs(this.plot.width - w) > 4) this.plot.setSize({ width: w, height: 220 });
    });
    this.resize.observe(this.plotEl);
  }

  destroy(): void {
    this.inflight?.abort();
    this.resize?.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}
