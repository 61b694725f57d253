// A worker and a reader in TypeScript over gRPC: `node smoke.js HOST:PORT [HTTP_HOST:PORT]`,
// compiled by tests/e2e/test_typescript_client.py and run against a real `simtrack serve`.
// Creates an agent, an experiment and a run, streams two metric batches and a final status
// through StreamRun, waits for the ack of the last one, reads the metrics back (GetMetricHistory,
// and ReadMetricHistory a page a message) and prints a JSON summary (NaN prints as null, and so
// does an unset lastStep). Given the HTTP listener too, it reads the run back over Connect
// (JSON) and gRPC-Web as well, and says whether each answer equals gRPC's.

import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import { createWritableIterable } from "@connectrpc/connect/protocol";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";

import { completed, hello, metricsAt, runningRuns } from "../src/example.js";
import { AgentService, Framework } from "../src/gen/simtrack/v1/agents_pb.js";
import { ExperimentService } from "../src/gen/simtrack/v1/experiments_pb.js";
import {
  GetRunResponseSchema,
  RunService,
  RunStatus,
} from "../src/gen/simtrack/v1/runs_pb.js";
import {
  ColumnEncoding,
  GetMetricHistoryResponseSchema,
  ListMetricsResponseSchema,
  ReadMetricHistoryResponseSchema,
  type StreamRunRequest,
  TelemetryService,
} from "../src/gen/simtrack/v1/telemetry_pb.js";

const CALL_TIMEOUT_MS = 20_000;

/** Whether two messages encode to the same bytes (bit for bit: NaN equals NaN, -0 is not 0). */
function sameBytes<D extends DescMessage>(schema: D, a: MessageShape<D>, b: MessageShape<D>) {
  return Buffer.from(toBinary(schema, a)).equals(toBinary(schema, b));
}

/** The numbers of a little-endian float64 or int64 column (a DataView: the bytes need not be
 * 8-byte aligned in the response's buffer). */
function littleEndian<T>(bytes: Uint8Array, read: (view: DataView, offset: number) => T): T[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 8 }, (_, i) => read(view, i * 8));
}

/** A double as text that keeps what JSON loses: NaN, -0. */
function exactly(value: number): string {
  return Object.is(value, -0) ? "-0" : String(value);
}

/** A metric's history read both ways over `transport`: the repeated fields, and the
 * little-endian columns; the points as text, and whether both ways hold the same ones. */
async function historyBothWays(transport: Transport, runId: string, metric: string) {
  const telemetry = createClient(TelemetryService, transport);
  const options = { timeoutMs: CALL_TIMEOUT_MS };
  const repeated = await telemetry.getMetricHistory({ runId, metric }, options);
  const packed = await telemetry.getMetricHistory(
    { runId, metric, columnEncoding: ColumnEncoding.LITTLE_ENDIAN },
    options,
  );
  const values = littleEndian(packed.valuesLe, (v, at) => v.getFloat64(at, true));
  // Consecutive steps come as firstStep alone; a timestamp every point shares, once.
  const steps =
    packed.stepsLe.length > 0
      ? littleEndian(packed.stepsLe, (v, at) => v.getBigInt64(at, true))
      : values.map((_, i) => packed.firstStep + BigInt(i));
  const sent = littleEndian(packed.timestampsLe, (v, at) => v.getFloat64(at, true));
  const stamps = sent.length === 1 ? values.map(() => sent[0] ?? Number.NaN) : sent;
  const same =
    packed.steps.length === 0 &&
    steps.join() === repeated.steps.join() &&
    values.map(exactly).join() === repeated.values.map(exactly).join() &&
    stamps.map(exactly).join() === repeated.timestamps.map(exactly).join();
  // ReadMetricHistory: the same points in one call, a message a page (of one point here).
  const streamed: string[] = [];
  const pages = telemetry.readMetricHistory(
    { runId, metric, pageSize: 1, columnEncoding: ColumnEncoding.LITTLE_ENDIAN },
    options,
  );
  for await (const { page } of pages) {
    const pageValues = littleEndian(page?.valuesLe ?? new Uint8Array(), (v, at) =>
      v.getFloat64(at, true),
    );
    streamed.push(...pageValues.map(exactly));
  }
  const sameStreamed = streamed.join() === values.map(exactly).join();
  const stepsSentOnce = packed.stepsLe.length === 0;
  return {
    steps: steps.map(Number),
    values: values.map(exactly),
    stepsSentOnce,
    same: same && sameStreamed,
  };
}

/** Whether GetRun, ListMetrics, GetMetricHistory and ReadMetricHistory (little-endian
 * columns) over `transport` answer what they answer over gRPC. */
async function sameOver(transport: Transport, grpc: Transport, runId: string): Promise<boolean> {
  const options = { timeoutMs: CALL_TIMEOUT_MS };
  const [overHttp, overGrpc] = [transport, grpc].map((t) => ({
    runs: createClient(RunService, t),
    telemetry: createClient(TelemetryService, t),
  }));
  if (overHttp === undefined || overGrpc === undefined) {
    return false;
  }
  const run = await overHttp.runs.getRun({ id: runId }, options);
  const metrics = await overHttp.telemetry.listMetrics({ runId }, options);
  const history = { runId, metric: "inventory", columnEncoding: ColumnEncoding.LITTLE_ENDIAN };
  const streams = await Promise.all(
    [overHttp, overGrpc].map(async (over) => {
      const messages = [];
      for await (const message of over.telemetry.readMetricHistory(
        { ...history, pageSize: 1 },
        options,
      )) {
        messages.push(message);
      }
      return messages;
    }),
  );
  const [httpPages = [], grpcPages = []] = streams;
  const sameStream =
    httpPages.length === 2 &&
    httpPages.length === grpcPages.length &&
    httpPages.every((page, i) => {
      const other = grpcPages[i];
      return other !== undefined && sameBytes(ReadMetricHistoryResponseSchema, page, other);
    });
  return (
    sameStream &&
    sameBytes(GetRunResponseSchema, run, await overGrpc.runs.getRun({ id: runId }, options)) &&
    sameBytes(
      ListMetricsResponseSchema,
      metrics,
      await overGrpc.telemetry.listMetrics({ runId }, options),
    ) &&
    sameBytes(
      GetMetricHistoryResponseSchema,
      await overHttp.telemetry.getMetricHistory(history, options),
      await overGrpc.telemetry.getMetricHistory(history, options),
    )
  );
}

async function main(target: string, http: string | undefined): Promise<void> {
  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const agents = createClient(AgentService, transport);
  const experiments = createClient(ExperimentService, transport);
  const runs = createClient(RunService, transport);
  const telemetry = createClient(TelemetryService, transport);
  const options = { timeoutMs: CALL_TIMEOUT_MS };

  const { agent } = await agents.createAgent(
    { agent: { name: "ts-smoke", framework: Framework.BASELINE, config: { margin: 0.2 } } },
    options,
  );
  const { experiment } = await experiments.createExperiment(
    {
      experiment: {
        name: "typescript smoke",
        agentId: agent?.id ?? "",
        scenarioId: "tier0-tutorial",
        params: { seed: 7 },
      },
    },
    options,
  );
  const experimentId = experiment?.id ?? "";
  const { run } = await runs.createRun({ run: { experimentId } }, options);
  const runId = run?.id ?? "";

  // Sequenced messages 1..3 go out after the welcome; the stream is done when 3 is acked.
  const batches = [
    // `void` never has a finite value: its Metric has no lastStep (inventory's is step 0).
    metricsAt(1n, 0n, { profit: 1.5, inventory: 100, void: Number.NaN }),
    metricsAt(2n, 1n, { profit: -0, inventory: Number.NaN, void: Number.NaN }),
    completed(3n, { total_profit: 1.5 }),
  ];
  const lastSeq = 3n;
  const requests = createWritableIterable<StreamRunRequest>();
  const responses = telemetry.streamRun(requests, options);
  await requests.write(hello(runId, "ts-smoke-worker"));
  let committed = -1n;
  for await (const response of responses) {
    switch (response.kind.case) {
      case "welcome":
        for (const batch of batches) {
          await requests.write(batch);
        }
        break;
      case "ack":
        committed = response.kind.value.committedSeq;
        if (committed >= lastSeq) {
          requests.close(); // ends our side; the server then ends the call with OK
        }
        break;
      default:
        break;
    }
  }
  if (committed < lastSeq) {
    throw new Error(`stream ended with seq ${committed} acknowledged, expected ${lastSeq}`);
  }

  const { metrics } = await telemetry.listMetrics({ runId }, options);
  const finished = (await runs.getRun({ id: runId }, options)).run;
  const listed = await runs.listRuns(runningRuns(experimentId), options);
  const overHttp =
    http === undefined
      ? {}
      : {
          connectJson: await sameOver(
            createConnectTransport({ baseUrl: `http://${http}`, httpVersion: "1.1" }),
            transport,
            runId,
          ),
          grpcWeb: await sameOver(
            createGrpcWebTransport({ baseUrl: `http://${http}`, httpVersion: "1.1" }),
            transport,
            runId,
          ),
        };
  const summary = {
    runId,
    overHttp,
    status: RunStatus[finished?.status ?? RunStatus.UNSPECIFIED],
    runningRuns: listed.runs.length,
    history: {
      inventory: await historyBothWays(transport, runId, "inventory"),
      profit: await historyBothWays(transport, runId, "profit"),
    },
    metrics: Object.fromEntries(
      metrics.map((m) => [
        m.name,
        {
          count: Number(m.count),
          // Optional in the proto: undefined when unset, so 0 is a real step.
          lastStep: m.lastStep === undefined ? null : Number(m.lastStep),
          lastValue: m.lastValue,
        },
      ]),
    ),
  };
  console.log(JSON.stringify(summary));
}

const target = process.argv[2];
if (target === undefined) {
  console.error("usage: node smoke.js HOST:PORT [HTTP_HOST:PORT]");
  process.exit(2);
}
await main(target, process.argv[3]);
