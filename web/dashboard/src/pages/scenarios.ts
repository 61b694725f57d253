import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
// The scenario catalogue, and one scenario: its leaderboard and its runs' stats.
import { api, describe, isAborted, isUnauthenticated } from "../api.js";
import { fail, type PageContext, replaceQuery } from "../app.js";
import { fill, h } from "../dom.js";
import { duration, int, json, num, statusName, time } from "../format.js";
import { MetricAggregate, RankOrder } from "../../../src/gen/simtrack/v1/runs_pb.js";
import type { Scenario } from "../../../src/gen/simtrack/v1/scenarios_pb.js";
import { ListView, table } from "../table.js";
import { experimentName, plain, progress, quote, runLink, runStatus, scenarioLink } from "./common.js";

function isObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** `last >= 1500` for {stat: "last", op: ">=", value: 1500}; other shapes as JSON. */
function criterionText(v: JsonValue): string {
  if (isObject(v) && typeof v["op"] === "string" && v["value"] !== undefined) {
    return `${typeof v["stat"] === "string" ? v["stat"] : "last"} ${v["op"]} ${json(v["value"])}`;
  }
  return json(v);
}

export async function scenariosPage({ root, signal }: PageContext): Promise<void> {
  root.append(h("h1", null, "Scenarios"));
  const list = new ListView<Scenario>({
    signal,
    filter: { value: "", placeholder: 'filter, e.g. difficulty_tier = 1 OR tags = "pricing"' },
    load: async (pageToken, filter, loading) => {
      const r = await api.scenarios.listScenarios({ pageSize: 100, pageToken, filter }, { signal: loading });
      return { items: r.scenarios, next: r.nextPageToken };
    },
    draw: (items) =>
      table(
        [
          { title: "Id", cell: (s) => scenarioLink(s.id) },
          { title: "Name", cell: (s) => s.name, wrap: true },
          { title: "Tier", cell: (s) => s.difficultyTier, num: true },
          { title: "Ticks", cell: (s) => int(s.durationTicks), num: true },
          { title: "Tags", cell: (s) => s.tags.join(", "), wrap: true },
          // Two lines of it in the list (the whole of it on the scenario's page and on hover).
          { title: "Description", cell: (s) => h("div", { class: "clamp", title: s.description }, s.description), wrap: true },
        ],
        items,
      ),
  });
  root.append(list.el);
  await list.reload();
}

export async function scenarioPage({ root, parts, query, signal }: PageContext): Promise<void> {
  const id = parts[0] ?? "";
  const { scenario } = await api.scenarios.getScenario({ id }, { signal });
  if (!scenario) return;
  const criteria = plain(scenario.successCriteria);
  root.append(
    h("h1", null, scenario.name || scenario.id, " ", h("span", { class: "muted" }, scenario.id)),
    h("p", null, scenario.description),
    h("div", { class: "facts" },
      h("div", null, h("b", null, "tier"), scenario.difficultyTier),
      h("div", null, h("b", null, "ticks"), int(scenario.durationTicks)),
      h("div", null, h("b", null, "tags"), scenario.tags.join(", ")),
      h("div", null, h("b", null, "runs"), h("a", { href: `#/runs?filter=${encodeURIComponent(`scenario_id = ${quote(id)}`)}` }, "all runs of this scenario")),
    ),
    h("h2", null, "Success criteria"),
    table(
      [
        { title: "Metric", cell: ([k]) => k },
        { title: "Criterion", cell: ([, v]) => criterionText(v) },
        { title: "Why", cell: ([, v]) => (isObject(v) && typeof v["description"] === "string" ? v["description"] : ""), wrap: true },
      ],
      Object.entries(criteria),
      { empty: "None." },
    ),
  );

  // Run stats
  const stats = h("div", { id: "run-stats" });
  root.append(h("h2", null, "Runs"), stats);
  try {
    const s = await api.runs.getRunStats({ filter: `scenario_id = ${quote(id)}` }, { signal });
    const d = s.durations;
    fill(
      stats,
      h("div", { class: "facts" },
        h("div", null, h("b", null, "total"), h("span", { "data-total": String(s.total) }, int(s.total))),
        h("div", null, h("b", null, "success rate"), Number.isNaN(s.successRate) ? "–" : `${(s.successRate * 100).toFixed(1)}%`),
        ...s.byStatus.filter((c) => c.count > 0n).map((c) => h("div", null, h("b", null, statusName(c.status)), int(c.count))),
      ),
      d && d.count > 0n
        ? h("div", { class: "facts" },
            h("div", null, h("b", null, "durations"), `${int(d.count)}`),
            h("div", null, h("b", null, "mean"), duration(d.mean)),
            h("div", null, h("b", null, "min"), duration(d.min)),
            h("div", null, h("b", null, "p50"), duration(d.p50)),
            h("div", null, h("b", null, "p95"), duration(d.p95)),
            h("div", null, h("b", null, "max"), duration(d.max)),
          )
        : null,
    );
  } catch (err) {
    if (isAborted(err)) return;
    if (isUnauthenticated(err)) throw err;
    fill(stats, h("p", { class: "error" }, describe(err)));
  }

  // Leaderboard: metric, aggregate and order chosen by the user (kept in the URL).
  // Default: total_profit if the scenario judges it, else its first criterion; the order
  // follows the criterion's comparison (a "<=" criterion ranks lowest first).
  const names = Object.keys(criteria);
  const chosen = query.get("metric") ?? (names.includes("total_profit") ? "total_profit" : (names[0] ?? "total_profit"));
  const criterion = criteria[chosen];
  const op = isObject(criterion) ? criterion["op"] : undefined;
  const lowestFirst = op === "<=" || op === "<";
  const metric = h("input", { type: "text", value: chosen, id: "board-metric", "aria-label": "metric" });
  const aggregate = h("select", { "aria-label": "aggregate" },
    h("option", { value: String(MetricAggregate.LATEST) }, "latest"),
    h("option", { value: String(MetricAggregate.MIN) }, "min"),
    h("option", { value: String(MetricAggregate.MAX) }, "max"));
  const order = h("select", { "aria-label": "order" },
    h("option", { value: String(RankOrder.HIGHEST_FIRST) }, "highest first"),
    h("option", { value: String(RankOrder.LOWEST_FIRST), selected: lowestFirst }, "lowest first"));
  const unfinished = h("input", { type: "checkbox", id: "board-unfinished" });
  const board = h("div", { id: "leaderboard" });
  const load = async () => {
    query.set("metric", metric.value.trim());
    replaceQuery(query);
    try {
      const r = await api.runs.getLeaderboard({
        scenarioId: id,
        metric: metric.value.trim(),
        aggregate: Number(aggregate.value),
        order: Number(order.value),
        limit: 20,
        includeUnfinished: unfinished.checked,
      }, { signal });
      const names = new Map(await Promise.all(r.entries.map(async (e) => [e.run?.experimentId ?? "", await experimentName(e.run?.experimentId ?? "", signal)] as const)));
      fill(
        board,
        h("p", { class: "muted" }, `${int(r.rankedRuns)} ${r.rankedRuns === 1n ? "run" : "runs"} ranked`),
        table(
          [
            { title: "Rank", cell: (e) => e.rank, num: true },
            { title: "Run", cell: (e) => (e.run ? runLink(e.run.id, `${names.get(e.run.experimentId) ?? ""} #${e.run.runNumber}`) : "") },
            { title: "Status", cell: (e) => (e.run ? runStatus(e.run.status) : "") },
            { title: metric.value.trim(), cell: (e) => num(e.value), num: true },
            { title: "Last step", cell: (e) => int(e.lastStep), num: true },
            { title: "Progress", cell: (e) => progress(e.run?.progressPercent ?? 0) },
            { title: "Ended", cell: (e) => time(e.run?.completeTime) },
          ],
          r.entries,
          { empty: "No run has a finite value of this metric yet.", id: "leaderboard-table" },
        ),
      );
    } catch (err) {
      if (isAborted(err)) return;
      if (isUnauthenticated(err)) fail(err);
      else fill(board, h("p", { class: "error" }, describe(err)));
    }
  };
  for (const el of [aggregate, order, unfinished]) el.addEventListener("change", () => void load());
  metric.addEventListener("keydown", (e) => {
    if (e.key === "Enter") void load();
  });
  root.append(
    h("h2", null, "Leaderboard"),
    h("div", { class: "toolbar" }, metric, aggregate, order, h("label", null, unfinished, " include unfinished"), h("button", { type: "button", onclick: () => void load() }, "Rank")),
    board,
  );
  await load();
}
