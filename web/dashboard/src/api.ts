// The dashboard's one way to the server: typed clients of the same API over Connect (binary),
// on the page's own origin, with the API key (if any) from this browser session.
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { AgentService } from "../../src/gen/simtrack/v1/agents_pb.js";
import { ArtifactService } from "../../src/gen/simtrack/v1/artifacts_pb.js";
import { ExperimentService } from "../../src/gen/simtrack/v1/experiments_pb.js";
import { RunService } from "../../src/gen/simtrack/v1/runs_pb.js";
import { ScenarioService } from "../../src/gen/simtrack/v1/scenarios_pb.js";
import { TelemetryService } from "../../src/gen/simtrack/v1/telemetry_pb.js";
import { ValidationService } from "../../src/gen/simtrack/v1/validations_pb.js";

// Session storage only: the key goes when the tab closes, and never into localStorage.
const KEY_ITEM = "simtrack.apiKey";

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY_ITEM);
}

export function storeKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** Where the page was served from (the API is beside it): the origin, plus the path prefix when
 * a reverse proxy serves simtrack under one (e.g. https://host/simtrack/). */
export function apiBase(): string {
  return location.origin + location.pathname.replace(/[^/]*$/, "").replace(/\/$/, "");
}

function clients(key: () => string | null) {
  const auth: Interceptor = (next) => (req) => {
    const k = key();
    if (k) req.header.set("Authorization", `Bearer ${k}`);
    return next(req);
  };
  const transport = createConnectTransport({
    baseUrl: apiBase(),
    useBinaryFormat: true,
    interceptors: [auth],
  });
  return {
    agents: createClient(AgentService, transport),
    artifacts: createClient(ArtifactService, transport),
    experiments: createClient(ExperimentService, transport),
    runs: createClient(RunService, transport),
    scenarios: createClient(ScenarioService, transport),
    telemetry: createClient(TelemetryService, transport),
    validations: createClient(ValidationService, transport),
  };
}

export const api = clients(storedKey);
export type Api = typeof api;
export type RunClient = Client<typeof RunService>;

/** Does the server take this key? (null: yes; else why not, for people.) */
export async function checkKey(key: string): Promise<string | null> {
  try {
    await clients(() => key).scenarios.listScenarios({ pageSize: 1 });
    return null;
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.Unauthenticated) {
      return `The server refused this key (unauthenticated: ${e.rawMessage}). Check it and try again.`;
    }
    return describe(e);
  }
}

export interface Violation {
  field: string;
  description: string;
}

/** The google.rpc.BadRequest field violations of an error (decoded by hand: two strings). */
export function violations(err: ConnectError): Violation[] {
  const found: Violation[] = [];
  for (const detail of err.details) {
    if (!("type" in detail) || detail.type !== "google.rpc.BadRequest") continue;
    const reader = new BinaryReader(detail.value);
    while (reader.pos < reader.len) {
      const [no, wireType] = reader.tag();
      if (no !== 1) {
        reader.skip(wireType);
        continue;
      }
      const inner = new BinaryReader(reader.bytes());
      const v: Violation = { field: "", description: "" };
      while (inner.pos < inner.len) {
        const [n, w] = inner.tag();
        if (n === 1) v.field = inner.string();
        else if (n === 2) v.description = inner.string();
        else inner.skip(w);
      }
      found.push(v);
    }
  }
  return found;
}

export function isAborted(err: unknown): boolean {
  return (
    (err instanceof DOMException && err.name === "AbortError") ||
    (err instanceof ConnectError && err.code === Code.Canceled)
  );
}

export function isUnauthenticated(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unauthenticated;
}

/** An error as one or two lines for people: what failed and what to do. */
export function describe(err: unknown): string {
  const e = ConnectError.from(err);
  const cause = e.cause;
  const network =
    cause instanceof TypeError ||
    /Failed to fetch|NetworkError|Load failed|fetch failed/i.test(e.rawMessage);
  if (network) {
    return `The simtrack server at ${apiBase()} cannot be reached. Is \`simtrack serve\` running? (${e.rawMessage})`;
  }
  switch (e.code) {
    case Code.Unauthenticated:
      return `This server needs an API key: ${e.rawMessage}`;
    case Code.PermissionDenied:
      return `Your API key may not do this: ${e.rawMessage}`;
    case Code.NotFound:
      return `Not found: ${e.rawMessage}`;
    case Code.Unavailable:
      return `The server is unavailable for now (retry shortly): ${e.rawMessage}`;
    case Code.Unimplemented:
      return `This server does not offer that call (is it an older simtrack?): ${e.rawMessage}`;
    case Code.InvalidArgument: {
      const fields = violations(e).map((v) => `${v.field}: ${v.description}`);
      return fields.length ? fields.join("\n") : e.rawMessage;
    }
    default:
      return `${Code[e.code] ?? "error"}: ${e.rawMessage}`;
  }
}
