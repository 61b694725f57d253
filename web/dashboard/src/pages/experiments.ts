// Home: the experiments, each linking to its runs table.
import { api } from "../api.js";
import type { PageContext } from "../app.js";
import { replaceQuery } from "../app.js";
import { h } from "../dom.js";
import { time } from "../format.js";
import { ExperimentStatus, type Experiment } from "../../../src/gen/simtrack/v1/experiments_pb.js";
import { ListView, table } from "../table.js";
import { agentNames, badge, experimentLink, scenarioLink } from "./common.js";

export async function experimentsPage({ root, query, signal }: PageContext): Promise<void> {
  const agents = await agentNames(signal);
  root.append(
    h("h1", null, "Experiments"),
    h("p", { class: "muted" }, "Each experiment is one agent on one scenario; open one for its runs, or see ", h("a", { href: "#/runs" }, "all runs"), "."),
  );
  const list = new ListView<Experiment>({
    signal,
    filter: {
      value: query.get("filter") ?? "",
      placeholder: 'filter, e.g. status = running AND scenario_id = "tier0-*"',
      id: "experiments-filter",
      onChange: (text) => {
        if (text) query.set("filter", text);
        else query.delete("filter");
        replaceQuery(query);
      },
    },
    load: async (pageToken, filter, loading) => {
      const r = await api.experiments.listExperiments({ pageSize: 50, pageToken, filter }, { signal: loading });
      return { items: r.experiments, next: r.nextPageToken };
    },
    draw: (items) =>
      table(
        [
          { title: "Name", cell: (e) => experimentLink(e.id, e.name || e.id) },
          { title: "Status", cell: (e) => {
            const s = (ExperimentStatus[e.status] ?? "").toLowerCase();
            return badge(s, s === "draft" ? "" : s);
          } },
          { title: "Scenario", cell: (e) => scenarioLink(e.scenarioId) },
          { title: "Agent", cell: (e) => agents.get(e.agentId) ?? e.agentId.slice(0, 8) },
          { title: "Hypothesis", cell: (e) => e.hypothesis, wrap: true },
          { title: "Created", cell: (e) => time(e.createTime) },
        ],
        items,
        { empty: "No experiments yet. Try `simtrack demo`.", id: "experiments" },
      ),
  });
  root.append(list.el);
  await list.reload();
}
