// Bits shared by the pages: status badges, progress bars, links, name lookups.
import type { JsonObject } from "@bufbuild/protobuf";
import { api } from "../api.js";
import { h } from "../dom.js";
import { statusName } from "../format.js";
import type { RunStatus } from "../../../src/gen/simtrack/v1/runs_pb.js";

export function badge(text: string, kind = text): HTMLElement {
  return h("span", { class: `badge ${kind}` }, text);
}

export function runStatus(status: RunStatus): HTMLElement {
  const name = statusName(status);
  return h("span", { class: `badge ${name}`, "data-status": name }, name);
}

export function progress(percent: number, big = false): HTMLElement {
  const p = Math.max(0, Math.min(100, percent));
  return h("span", { class: big ? "progress big" : "progress", title: `${p.toFixed(1)}%` }, h("span", { style: `width:${p}%` }));
}

export function runLink(id: string, text: string): HTMLElement {
  return h("a", { href: `#/runs/${encodeURIComponent(id)}` }, text);
}

export function scenarioLink(id: string): HTMLElement | string {
  return id ? h("a", { href: `#/scenarios/${encodeURIComponent(id)}` }, id) : "";
}

export function experimentLink(id: string, name?: string): HTMLElement {
  return h("a", { href: `#/experiments/${encodeURIComponent(id)}` }, name ?? id.slice(0, 8));
}

/** A Struct field (protobuf-es gives it as a JSON object) or {} when unset. */
export function plain(s: JsonObject | undefined): JsonObject {
  return s ?? {};
}

/** A JSON string literal for the filter language. */
export function quote(text: string): string {
  return `"${text.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}

// Names of experiments and agents, looked up once per page load and remembered.
const experimentNames = new Map<string, Promise<string>>();

export function experimentName(id: string, signal?: AbortSignal): Promise<string> {
  let name = experimentNames.get(id);
  if (!name) {
    name = api.experiments
      .getExperiment({ id }, signal ? { signal } : {})
      .then((r) => r.experiment?.name ?? id)
      .catch((err: unknown) => {
        experimentNames.delete(id);
        throw err;
      });
    experimentNames.set(id, name);
  }
  return name;
}

export async function agentNames(signal: AbortSignal): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let pageToken = "";
  do {
    const r = await api.agents.listAgents({ pageSize: 1000, pageToken }, { signal });
    for (const a of r.agents) names.set(a.id, a.name);
    pageToken = r.nextPageToken;
  } while (pageToken);
  return names;
}
