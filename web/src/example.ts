// Building simtrack requests with the generated TypeScript stubs (src/gen, from protos/).
// Environment-neutral: the web front-end and the Node smoke client (../smoke) both use it.
// Messages are plain objects made with create(); int64 fields are bigint; a oneof is
// {case, value}; well-known types come from @bufbuild/protobuf/wkt.

import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";

import { type ListRunsRequest, ListRunsRequestSchema } from "./gen/simtrack/v1/runs_pb.js";
import {
  MetricBatchSchema,
  MetricKind,
  MetricSeriesSchema,
  RunOutcome,
  type StreamRunRequest,
  StreamRunRequestSchema,
} from "./gen/simtrack/v1/telemetry_pb.js";

/** The first page of an experiment's running runs. */
export function runningRuns(experimentId: string, pageSize = 50): ListRunsRequest {
  return create(ListRunsRequestSchema, {
    pageSize,
    filter: `experiment_id = "${experimentId}" AND status = "running"`,
  });
}

/** The message that opens a worker's StreamRun: which run, which worker. */
export function hello(runId: string, workerId: string): StreamRunRequest {
  return create(StreamRunRequestSchema, {
    seq: 0n,
    kind: { case: "hello", value: { runId, workerId } },
  });
}

/** One batch of points for the metrics named in `points`, all at `step`, stamped now. */
export function metricsAt(
  seq: bigint,
  step: bigint,
  points: Readonly<Record<string, number>>,
): StreamRunRequest {
  const seconds = Number(timestampNow().seconds);
  const series = Object.entries(points).map(([name, value]) =>
    create(MetricSeriesSchema, {
      name,
      kind: MetricKind.GAUGE,
      steps: [step],
      values: [value],
      timestamps: [seconds],
    }),
  );
  return create(StreamRunRequestSchema, {
    seq,
    kind: { case: "metrics", value: create(MetricBatchSchema, { series }) },
  });
}

/** The last message of a worker's stream: the run completed with these results. */
export function completed(seq: bigint, results: Readonly<Record<string, number>>): StreamRunRequest {
  return create(StreamRunRequestSchema, {
    seq,
    kind: { case: "status", value: { outcome: RunOutcome.COMPLETED, results: { ...results } } },
  });
}
