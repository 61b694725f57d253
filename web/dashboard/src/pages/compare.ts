// Several runs' metric on one chart (CompareRuns: one step grid for all), legend by experiment
// name and run number, and a table of each run's points and extremes.
import { api, describe, isAborted } from "../api.js";
import { type PageContext, replaceQuery } from "../app.js";
import { Chart, drawable, type Loaded } from "../chart.js";
import { fill, h } from "../dom.js";
import { int, num } from "../format.js";
import uPlot from "uplot";

export async function comparePage({ root, query, signal }: PageContext): Promise<void> {
  const runIds = (query.get("runs") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  root.append(h("h1", null, "Compare runs"));
  const idsInput = h("input", { type: "text", value: runIds.join(", "), placeholder: "run ids, separated by commas", id: "compare-runs", "aria-label": "run ids", style: "flex:1 1 300px;min-width:0" });
  const go = () => {
    const q = new URLSearchParams({ runs: idsInput.value.split(/[\s,]+/).filter(Boolean).join(",") });
    const m = query.get("metric");
    if (m) q.set("metric", m);
    location.hash = `#/compare?${q.toString()}`;
  };
  idsInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") go();
  });
  root.append(h("div", { class: "toolbar" }, idsInput, h("button", { type: "button", onclick: go }, "Compare")));
  if (runIds.length === 0) {
    root.append(h("p", { class: "muted" }, "Pick runs in a ", h("a", { href: "#/runs" }, "runs table"), " (tick two or more, then “Compare selected”), or paste their ids above."));
    return;
  }

  // The metrics any of the runs has, for the picker.
  const names = new Set<string>();
  await Promise.all(runIds.map(async (runId) => {
    const r = await api.telemetry.listMetrics({ runId, pageSize: 1000 }, { signal });
    for (const m of r.metrics) names.add(m.name);
  }));
  const metric = query.get("metric") && names.has(query.get("metric") ?? "") ? (query.get("metric") ?? "") : ([...names].sort()[0] ?? "");
  const picker = h("select", { id: "compare-metric", "aria-label": "metric" }, [...names].sort().map((n) => h("option", { value: n, selected: n === metric }, n)));
  picker.addEventListener("change", () => {
    query.set("metric", picker.value);
    replaceQuery(query);
    void draw(picker.value);
  });
  const chartBox = h("div", { id: "compare-chart" });
  const summary = h("div", { id: "compare-summary" });
  root.append(h("div", { class: "toolbar" }, h("label", null, "Metric ", picker)), chartBox, summary);
  if (!metric) {
    fill(chartBox, h("p", { class: "muted" }, "These runs have no metrics yet."));
    return;
  }

  let chart: Chart | null = null;
  const draw = async (name: string) => {
    chart?.destroy();
    const loader = async (range: { start: bigint; end: bigint } | null, maxPoints: number, sig: AbortSignal): Promise<Loaded> => {
      const r = await api.telemetry.compareRuns(
        { runIds, metrics: [name], maxPoints, ...(range ? { startStep: range.start, endStep: range.end } : {}) },
        { signal: sig },
      );
      const labels = r.runs.map((run) => `${run.experimentName} #${run.runNumber}`);
      const tables: uPlot.AlignedData[] = r.series.map((s) => [s.steps.map(Number), drawable(s.values)]);
      const data = tables.length === 1 ? (tables[0] as uPlot.AlignedData) : uPlot.join(tables);
      fill(summary, h("div", { class: "scroll" }, h("table", { id: "compare-table" },
        h("thead", null, h("tr", null, ["Run", "Points", "Stored in range", "Min", "Max", "Last"].map((t, i) => h("th", { class: i ? "num" : undefined }, t)))),
        h("tbody", null, r.series.map((s, i) => {
          const finite = s.values.filter(Number.isFinite);
          return h("tr", { "data-run": s.runId, "data-points": String(s.values.length) },
            h("td", null, h("a", { href: `#/runs/${s.runId}` }, labels[i] ?? s.runId), s.missing ? h("span", { class: "muted" }, " (no such metric)") : null),
            h("td", { class: "num" }, int(s.values.length)),
            h("td", { class: "num" }, int(s.rangeCount)),
            h("td", { class: "num" }, finite.length ? num(Math.min(...finite)) : "–"),
            h("td", { class: "num" }, finite.length ? num(Math.max(...finite)) : "–"),
            h("td", { class: "num" }, finite.length ? num(finite[finite.length - 1]) : "–"));
        })))));
      return {
        data,
        labels,
        caption: [`${r.series.length} runs · ${int(r.series.reduce((n, s) => n + s.values.length, 0))} points on one grid of ${r.grids[0]?.intervals ?? 0} intervals`],
        attrs: { series: String(r.series.length), points: r.series.map((s) => s.values.length).join(",") },
      };
    };
    chart = new Chart(name, loader, signal, { id: "compare", "data-metric": name });
    fill(chartBox, chart.el);
    await chart.load();
  };
  try {
    await draw(metric);
  } catch (err) {
    if (!isAborted(err)) fill(chartBox, h("p", { class: "error" }, describe(err)));
  }
}
