// One run, live: WatchRun keeps the header, progress and latest metrics current; charts of its
// metrics come downsampled from GetMetricHistory and zoom by asking again; then its events,
// validations and artifacts.
import { create } from "@bufbuild/protobuf";
import { api, describe, isAborted, isUnauthenticated } from "../api.js";
import { fail, type PageContext } from "../app.js";
import { Chart, drawable, type Loaded } from "../chart.js";
import { fill, h } from "../dom.js";
import { bytes, duration, int, json, num, time } from "../format.js";
import { ArtifactType, type Artifact } from "../../../src/gen/simtrack/v1/artifacts_pb.js";
import { type LatestMetric, LatestMetricSchema, type Run, RunStatus } from "../../../src/gen/simtrack/v1/runs_pb.js";
import type { StoredEvent } from "../../../src/gen/simtrack/v1/telemetry_pb.js";
import { ListView, table } from "../table.js";
import { badge, experimentLink, experimentName, plain, progress, runStatus, scenarioLink } from "./common.js";

const ENDED = new Set([RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED]);
const MAX_CHARTS = 12;
const CHART_REFRESH_MS = 2000;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = window.setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { window.clearTimeout(t); resolve(); }, { once: true });
  });

/** The points of one metric (a step range of it, at most maxPoints), with their extremes. */
export function historyLoader(runId: string, metric: string) {
  return async (range: { start: bigint; end: bigint } | null, maxPoints: number, signal: AbortSignal): Promise<Loaded> => {
    const r = await api.telemetry.getMetricHistory(
      { runId, metric, maxPoints, ...(range ? { startStep: range.start, endStep: range.end } : {}) },
      { signal },
    );
    let min = Infinity, max = -Infinity, minStep = 0n, maxStep = 0n;
    r.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      if (v < min) { min = v; minStep = r.steps[i] ?? 0n; }
      if (v > max) { max = v; maxStep = r.steps[i] ?? 0n; }
    });
    const n = r.values.length;
    const found = Number.isFinite(min);
    return {
      data: [r.steps.map(Number), drawable(r.values)],
      labels: [metric],
      caption: [
        `${int(n)} points`,
        r.downsampled ? ` of ${int(r.rangeCount)}` : "",
        found ? ` · min ${num(min)} at step ${minStep} · max ${num(max)} at step ${maxStep}` : " · no finite value",
      ],
      attrs: {
        points: String(n),
        rangeCount: String(r.rangeCount),
        downsampled: String(r.downsampled),
        ...(found ? { min: String(min), minStep: String(minStep), max: String(max), maxStep: String(maxStep) } : {}),
      },
    };
  };
}

export async function runPage({ root, parts, signal }: PageContext): Promise<void> {
  const id = parts[0] ?? "";
  const first = (await api.runs.getRun({ id }, { signal })).run;
  if (!first) return;
  let run: Run = first;
  const expName = await experimentName(run.experimentId, signal).catch(() => run.experimentId);

  const head = h("div", { id: "run-head" });
  const liveNote = h("span", { class: "muted", id: "live-note" });
  const latest = h("div", { id: "latest-metrics" });
  const chartsEl = h("div", { class: "charts", id: "charts" });
  const chartsNote = h("p", { class: "muted" });
  const charts = new Map<string, Chart>();
  const units = new Map<string, string>(); // from ListMetrics (WatchRun does not carry them)
  let chartsRefreshed = performance.now();

  // Controls for a live run: pause/resume, and cancel after a confirming second click.
  const controls = runControls(id, signal);

  // The title bar is made once: redrawn on every update, its buttons would be taken out of
  // the page and put back several times a second, and a click landing meanwhile was lost.
  const statusEl = h("span", { id: "run-status" });
  const details = h("div");
  head.append(
    h("div", { class: "runhead" },
      h("h1", null, `Run #${run.runNumber} `, h("span", { class: "muted" }, "of "), experimentLink(run.experimentId, expName)),
      statusEl,
      liveNote,
      controls.el,
    ),
    details,
  );

  const drawHead = () => {
    controls.update(run.status);
    fill(statusEl, runStatus(run.status));
    const end = run.totalTicks > 0n ? ` / ${int(run.totalTicks)}` : "";
    const params = plain(run.params);
    const results = plain(run.results);
    fill(
      details,
      h("div", { class: "runhead" },
        progress(run.progressPercent, true),
        h("span", { id: "run-progress" }, `tick ${int(run.currentTick)}${end} · ${run.progressPercent.toFixed(1)}%`),
      ),
      h("div", { class: "facts" },
        h("div", null, h("b", null, "id"), h("code", null, run.id)),
        h("div", null, h("b", null, "scenario"), scenarioLink(run.scenarioId)),
        h("div", null, h("b", null, "worker"), run.workerId || "–"),
        h("div", null, h("b", null, "created"), time(run.createTime)),
        h("div", null, h("b", null, "started"), time(run.startTime) || "–"),
        h("div", null, h("b", null, "ended"), time(run.completeTime) || "–"),
        h("div", null, h("b", null, "duration"), duration(run.duration) || "–"),
        Object.keys(params).length ? h("div", { title: JSON.stringify(params) }, h("b", null, "params"), json(params)) : null,
        Object.keys(results).length ? h("div", { title: JSON.stringify(results) }, h("b", null, "results"), json(results)) : null,
      ),
      run.errorMessage && run.status === RunStatus.FAILED ? h("p", { class: "notice" }, `Failed: ${run.errorMessage}`) : null,
      run.errorMessage && run.status !== RunStatus.FAILED && run.errorMessage !== run.cancelReason
        ? h("p", { class: "muted" }, run.errorMessage)
        : null,
      run.cancelReason ? h("p", { class: "muted" }, `Cancel requested: ${run.cancelReason}`) : null,
    );
  };

  const drawLatest = (metrics: LatestMetric[]) => {
    fill(latest, table(
      [
        { title: "Metric", cell: (m) => m.name },
        { title: "Latest", cell: (m) => (m.step === undefined ? "–" : num(m.value)), num: true },
        { title: "Step", cell: (m) => (m.step === undefined ? "–" : int(m.step)), num: true },
        { title: "Points", cell: (m) => int(m.count), num: true },
        { title: "Min", cell: (m) => num(m.min), num: true },
        { title: "Max", cell: (m) => num(m.max), num: true },
      ],
      metrics,
      { empty: "No metrics yet.", id: "latest-table" },
    ));
  };

  const ensureCharts = (names: string[]) => {
    for (const name of names) {
      if (charts.has(name) || charts.size >= MAX_CHARTS) continue;
      const unit = units.get(name);
      const title = [name, unit ? h("span", { class: "muted" }, ` (${unit})`) : null];
      const chart = new Chart(title, historyLoader(id, name), signal, { "data-metric": name });
      charts.set(name, chart);
      chartsEl.append(chart.el);
      void chart.load();
    }
    chartsNote.textContent = names.length > charts.size ? `Charts of the first ${charts.size} of ${names.length} metrics.` : "Drag across a chart to zoom into a step range; double-click to zoom out.";
  };

  root.append(head, h("h2", null, "Latest metrics"), latest, h("h2", null, "Charts"), chartsNote, chartsEl);
  drawHead();

  const metrics = await api.telemetry.listMetrics({ runId: id, pageSize: 1000 }, { signal });
  drawLatest(metrics.metrics.map((m) => create(LatestMetricSchema, {
    name: m.name, value: m.lastValue, count: m.count, min: m.min, max: m.max,
    ...(m.lastStep !== undefined ? { step: m.lastStep } : {}),
  })));
  for (const m of metrics.metrics) if (m.unit) units.set(m.name, m.unit);
  ensureCharts(metrics.metrics.map((m) => m.name));

  // Validations and artifacts are (re)read when the run ends: the server judges it then.
  const validations = h("div", { id: "validations" });
  const artifacts = h("div", { id: "artifacts" });
  const events = eventsList(id, signal);
  root.append(h("h2", null, "Validations"), validations, h("h2", null, "Artifacts"), artifacts, h("h2", null, "Events"), events.el);
  const loadSides = () => Promise.all([loadValidations(id, validations, signal), loadArtifacts(id, artifacts, signal)]);
  await Promise.all([loadSides(), events.reload()]);

  void watch();

  async function watch(): Promise<void> {
    while (!signal.aborted) {
      try {
        liveNote.textContent = ENDED.has(run.status) ? "" : "● live";
        for await (const update of api.runs.watchRun({ id }, { signal })) {
          if (!update.run) continue;
          const wasEnded = ENDED.has(run.status);
          run = update.run;
          drawHead();
          drawLatest(update.metrics);
          ensureCharts(update.metrics.map((m) => m.name));
          const ended = ENDED.has(run.status);
          const now = performance.now();
          if ((ended && !wasEnded) || now - chartsRefreshed > CHART_REFRESH_MS) {
            chartsRefreshed = now;
            for (const chart of charts.values()) if (!chart.zoomed) void chart.load(true);
            void events.refresh();
          }
          if (ended && !wasEnded) void loadSides();
          liveNote.textContent = ended ? "" : "● live";
        }
        if (ENDED.has(run.status)) return; // WatchRun ends after the run ends
      } catch (err) {
        if (isAborted(err) || signal.aborted) return;
        if (isUnauthenticated(err)) {
          fail(err);
          return;
        }
        liveNote.textContent = `live updates interrupted (${describe(err)}); retrying…`;
      }
      await sleep(2000, signal);
    }
  }
}

function runControls(id: string, signal: AbortSignal) {
  const pause = h("button", { type: "button", id: "pause-run" }, "Pause");
  const resume = h("button", { type: "button", id: "resume-run" }, "Resume");
  const cancel = h("button", { type: "button", id: "cancel-run", title: "ask the run's worker to stop" }, "Cancel run");
  const el = h("span", { class: "controls" }, pause, resume, cancel);
  let confirmUntil = 0;
  const call = async (button: HTMLButtonElement, action: () => Promise<unknown>) => {
    button.disabled = true;
    try {
      await action();
    } catch (err) {
      fail(err); // e.g. a reader's key: "Your API key may not do this"
    } finally {
      button.disabled = false;
    }
  };
  pause.addEventListener("click", () => void call(pause, () => api.runs.pauseRun({ id }, { signal })));
  resume.addEventListener("click", () => void call(resume, () => api.runs.resumeRun({ id }, { signal })));
  cancel.addEventListener("click", () => {
    if (Date.now() > confirmUntil) {
      confirmUntil = Date.now() + 5000;
      cancel.textContent = "Click again to cancel";
      window.setTimeout(() => { if (Date.now() > confirmUntil) cancel.textContent = "Cancel run"; }, 5100);
      return;
    }
    confirmUntil = 0;
    cancel.textContent = "Cancel run";
    void call(cancel, () => api.runs.cancelRun({ id, reason: "cancelled from the dashboard" }, { signal }));
  });
  return {
    el,
    update(status: RunStatus) {
      pause.hidden = status !== RunStatus.RUNNING;
      resume.hidden = status !== RunStatus.PAUSED;
      cancel.hidden = ENDED.has(status);
    },
  };
}

function eventsList(runId: string, signal: AbortSignal): ListView<StoredEvent> {
  return new ListView<StoredEvent>({
    signal,
    filter: { value: "", placeholder: 'filter, e.g. type = "place_order" AND step > 100', id: "events-filter" },
    load: async (pageToken, filter, loading) => {
      const r = await api.telemetry.listEvents({ runId, pageSize: 50, pageToken, filter }, { signal: loading });
      return { items: r.events, next: r.nextPageToken };
    },
    draw: (items) =>
      table(
        [
          { title: "Step", cell: (e) => int(e.event?.step ?? 0n), num: true },
          { title: "Time", cell: (e) => time(e.event?.time) },
          { title: "Type", cell: (e) => e.event?.type ?? "" },
          { title: "Agent", cell: (e) => e.event?.agentId.slice(0, 8) ?? "" },
          { title: "Payload", cell: (e) => json(plain(e.event?.payload), 200), wrap: true },
        ],
        items,
        { empty: "No events.", id: "events" },
      ),
  });
}

async function loadValidations(runId: string, el: HTMLElement, signal: AbortSignal): Promise<void> {
  try {
    const r = await api.validations.listValidations({ runId, pageSize: 1000 }, { signal });
    fill(el, table(
      [
        { title: "Verdict", cell: (v) => badge(v.passed ? "pass" : "fail") },
        { title: "Validator", cell: (v) => v.validator },
        { title: "Kind", cell: (v) => v.kind },
        { title: "Score", cell: (v) => (v.score === undefined ? "–" : num(v.score)), num: true },
        { title: "Details", cell: (v) => json(plain(v.details), 200), wrap: true },
      ],
      r.validations,
      { empty: "No verdicts yet (the scenario's criteria are checked when the run completes).", id: "validations-table" },
    ));
  } catch (err) {
    sideError(el, err);
  }
}

async function loadArtifacts(runId: string, el: HTMLElement, signal: AbortSignal): Promise<void> {
  try {
    const r = await api.artifacts.listArtifacts({ runId, pageSize: 1000 }, { signal });
    fill(el, table(
      [
        { title: "Name", cell: (a) => h("a", { href: "#", onclick: (e) => { e.preventDefault(); void download(a, e.target as HTMLElement); } }, a.name) },
        { title: "Type", cell: (a) => (ArtifactType[a.type] ?? "").toLowerCase() },
        { title: "Content type", cell: (a) => a.contentType },
        { title: "Size", cell: (a) => bytes(a.sizeBytes), num: true },
        { title: "SHA-256", cell: (a) => h("code", { title: a.sha256 }, a.sha256.slice(0, 12)) },
        { title: "Stored", cell: (a) => time(a.createTime) },
      ],
      r.artifacts,
      { empty: "No artifacts.", id: "artifacts-table" },
    ));
  } catch (err) {
    sideError(el, err);
  }
}

/** Download through GetArtifactContent (a stream of chunks) into a Blob the browser saves. */
async function download(artifact: Artifact, link: HTMLElement): Promise<void> {
  const label = link.textContent;
  link.textContent = `${artifact.name} (downloading…)`;
  try {
    const chunks: Uint8Array<ArrayBuffer>[] = [];
    for await (const part of api.artifacts.getArtifactContent({ id: artifact.id })) {
      if (part.kind.case === "chunk") chunks.push(new Uint8Array(part.kind.value));
    }
    const url = URL.createObjectURL(new Blob(chunks, { type: artifact.contentType || "application/octet-stream" }));
    const a = h("a", { href: url, download: artifact.name });
    document.body.append(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    fail(err);
  } finally {
    link.textContent = label;
  }
}

function sideError(el: HTMLElement, err: unknown): void {
  if (isAborted(err)) return;
  if (isUnauthenticated(err)) fail(err);
  else fill(el, h("p", { class: "error" }, describe(err)));
}
