// The runs table, of one experiment (#/experiments/<id>) or of all (#/runs): columns for params
// and latest metrics chosen by the user, the API's filter language, sorting by the API's
// order_by, paging with its tokens, and a selection to compare.
import type { JsonValue } from "@bufbuild/protobuf";
import { api } from "../api.js";
import { type PageContext, replaceQuery } from "../app.js";
import { fill, h } from "../dom.js";
import { duration, int, num, shortTime, statusName, time } from "../format.js";
import { type LatestMetric, type Run, RunStatus } from "../../../src/gen/simtrack/v1/runs_pb.js";
import { type Column, ListView, orderBy, parseSort, type Sort, table } from "../table.js";
import { agentNames, experimentLink, experimentName, plain, progress, quote, runLink, runStatus, scenarioLink } from "./common.js";

const LIVE = new Set([RunStatus.PENDING, RunStatus.STARTING, RunStatus.RUNNING, RunStatus.PAUSED]);

interface Row {
  run: Run;
  params: Record<string, JsonValue>;
  metrics: Map<string, LatestMetric>;
  experiment: string;
}

export async function runsPage({ root, parts, query, signal }: PageContext): Promise<void> {
  const experimentId = parts[0] ?? "";
  let prefix = "";
  if (experimentId) {
    const { experiment } = await api.experiments.getExperiment({ id: experimentId }, { signal });
    const agents = await agentNames(signal);
    if (experiment) {
      root.append(
        h("h1", null, experiment.name, " ", h("span", { class: "muted" }, "experiment")),
        h("div", { class: "facts" },
          h("div", null, h("b", null, "scenario"), scenarioLink(experiment.scenarioId)),
          h("div", null, h("b", null, "agent"), agents.get(experiment.agentId) ?? experiment.agentId),
          h("div", null, h("b", null, "created"), time(experiment.createTime)),
          h("div", { title: JSON.stringify(plain(experiment.params)) }, h("b", null, "params"), JSON.stringify(plain(experiment.params))),
        ),
      );
      if (experiment.hypothesis) root.append(h("p", null, h("b", null, "Hypothesis: "), experiment.hypothesis));
      const stats = await api.runs.getRunStats({ filter: `experiment_id = ${quote(experimentId)}` }, { signal });
      root.append(h("div", { class: "facts", id: "experiment-stats" },
        h("div", null, h("b", null, "runs"), int(stats.total)),
        h("div", null, h("b", null, "success rate"), Number.isNaN(stats.successRate) ? "–" : `${(stats.successRate * 100).toFixed(1)}%`),
        ...stats.byStatus.filter((c) => c.count > 0n).map((c) => h("div", null, h("b", null, statusName(c.status)), int(c.count))),
        stats.durations && stats.durations.count > 0n ? h("div", null, h("b", null, "median duration"), duration(stats.durations.p50)) : null,
      ));
    }
    prefix = `experiment_id = ${quote(experimentId)}`;
  } else {
    root.append(h("h1", null, "Runs"));
  }

  const columns: string[] = (query.get("cols") ?? "").split(",").filter(Boolean);
  // Runs per page: 50, or `size=` in the route (1-1000, the API's bounds).
  const pageSize = Math.min(1000, Math.max(1, Number(query.get("size")) || 50));
  let sort: Sort | null = parseSort(query.get("order") ?? "");
  const seenParams = new Set<string>();
  const seenMetrics = new Set<string>();
  const selected = new Set<string>();
  let rows: Row[] = [];

  const save = () => {
    for (const [k, v] of [["cols", columns.join(",")], ["order", orderBy(sort)]] as const) {
      if (v) query.set(k, v);
      else query.delete(k);
    }
    replaceQuery(query);
  };

  const adder = h("select", { "aria-label": "add column", id: "add-column" });
  const chips = h("div", { class: "chips" });
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
  compare.addEventListener("click", () => {
    const metric = columns.find((c) => c.startsWith("metrics."))?.slice("metrics.".length) ?? "";
    const q = new URLSearchParams({ runs: [...selected].join(",") });
    if (metric) q.set("metric", metric);
    location.hash = `#/compare?${q.toString()}`;
  });
  const updateCompare = () => {
    compare.disabled = selected.size < 2;
    compare.textContent = `Compare selected (${selected.size})`;
  };

  const drawControls = () => {
    fill(chips, columns.map((c) => h("span", { class: "chip" }, c, h("button", { type: "button", title: `remove ${c}`, onclick: () => {
      columns.splice(columns.indexOf(c), 1);
      save();
      void list.reload();
    } }, "×"))));
    const free = (names: Set<string>, kind: string) =>
      [...names].sort().map((n) => `${kind}.${n}`).filter((k) => !columns.includes(k)).map((k) => h("option", { value: k }, k));
    fill(adder,
      h("option", { value: "" }, "+ add column"),
      h("optgroup", { label: "latest metrics" }, free(seenMetrics, "metrics")),
      h("optgroup", { label: "params" }, free(seenParams, "params")));
  };
  adder.addEventListener("change", () => {
    if (adder.value) columns.push(adder.value);
    save();
    void list.reload();
  });

  const onSort = (key: string) => {
    sort = sort?.key === key ? { key, desc: !sort.desc } : { key, desc: key.startsWith("metrics.") };
    save();
    void list.reload();
  };

  const cellOf = (key: string, row: Row): string => {
    if (key.startsWith("params.")) {
      const v = row.params[key.slice("params.".length)];
      return v === undefined ? "" : typeof v === "number" ? num(v) : typeof v === "string" ? v : JSON.stringify(v);
    }
    const m = row.metrics.get(key.slice("metrics.".length));
    return m && m.step !== undefined ? num(m.value) : "";
  };

  const draw = (items: Row[]) => {
    const cols: Column<Row>[] = [
      { title: "", cell: (r) => {
        const box = h("input", { type: "checkbox", "aria-label": `select run ${r.run.runNumber}`, checked: selected.has(r.run.id), "data-run": r.run.id });
        box.addEventListener("change", () => {
          if (box.checked) selected.add(r.run.id);
          else selected.delete(r.run.id);
          updateCompare();
        });
        return box;
      } },
      { title: "#", cell: (r) => runLink(r.run.id, `#${r.run.runNumber}`), num: true, sort: "run_number" },
    ];
    if (!experimentId) cols.push({ title: "Experiment", cell: (r) => experimentLink(r.run.experimentId, r.experiment) });
    cols.push(
      { title: "Status", cell: (r) => runStatus(r.run.status) },
      { title: "Progress", cell: (r) => [progress(r.run.progressPercent), ` ${r.run.progressPercent.toFixed(0)}%`] },
      { title: "Tick", cell: (r) => int(r.run.currentTick), num: true },
      { title: "Scenario", cell: (r) => scenarioLink(r.run.scenarioId) },
      { title: "Created", cell: (r) => h("span", { title: time(r.run.createTime) }, shortTime(r.run.createTime)), sort: "create_time" },
      { title: "Duration", cell: (r) => duration(r.run.duration), num: true, sort: "duration" },
      // Titles without their "metrics."/"params." prefix, to keep the table narrow.
      ...columns.map((c): Column<Row> => ({ title: c.slice(c.indexOf(".") + 1), cell: (r) => cellOf(c, r), num: true, sort: c })),
    );
    drawControls();
    return table(cols, items, { sort, onSort, empty: "No runs match.", id: "runs" });
  };

  const list: ListView<Row> = new ListView<Row>({
    signal,
    filter: {
      value: query.get("filter") ?? "",
      placeholder: 'filter, e.g. status = completed AND metrics.total_profit > 1000',
      id: "runs-filter",
      offset: prefix ? prefix.length + " AND (".length : 0,
      onChange: (text) => {
        if (text) query.set("filter", text);
        else query.delete("filter");
        replaceQuery(query);
      },
    },
    toolbar: [adder, chips, compare],
    load: async (pageToken, filter, loading) => {
      const combined = prefix && filter ? `${prefix} AND (${filter})` : prefix || filter;
      // The metric columns' values come with the page (latestMetrics: one call).
      const latestMetrics = columns.filter((c) => c.startsWith("metrics.")).map((c) => c.slice("metrics.".length));
      const r = await api.runs.listRuns({ pageSize, pageToken, filter: combined, orderBy: orderBy(sort), latestMetrics }, { signal: loading });
      rows = await Promise.all(r.runs.map(async (run, i) => {
        const params = plain(run.params);
        for (const [k, v] of Object.entries(params)) if (v === null || typeof v !== "object") seenParams.add(k);
        const metrics = new Map((r.latestMetrics[i]?.metrics ?? []).map((m) => [m.name, m]));
        // Metric names to offer as columns: learnt from the first few runs of each page.
        if (i < 3) {
          const m = await api.telemetry.listMetrics({ runId: run.id, pageSize: 1000 }, { signal: loading });
          for (const metric of m.metrics) seenMetrics.add(metric.name);
        }
        const experiment = experimentId ? "" : await experimentName(run.experimentId, signal).catch(() => run.experimentId.slice(0, 8));
        return { run, params, metrics, experiment };
      }));
      return { items: rows, next: r.nextPageToken };
    },
    draw,
  });
  updateCompare();
  drawControls();
  root.append(list.el);
  await list.reload();

  // Live runs on the page: refresh it every few seconds while any is live.
  const timer = window.setInterval(() => {
    if (rows.some((r) => LIVE.has(r.run.status))) void list.refresh();
  }, 3000);
  signal.addEventListener("abort", () => window.clearInterval(timer));
}
