// Numbers, times and durations as people read them (en-US digits, so tests can read them too).
import type { Duration, Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { RunStatus } from "../../src/gen/simtrack/v1/runs_pb.js";

const compact = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 6 });
const integer = new Intl.NumberFormat("en-US");

export function num(value: number | undefined): string {
  if (value === undefined) return "";
  if (Number.isNaN(value)) return "NaN";
  if (!Number.isFinite(value)) return value > 0 ? "+Inf" : "-Inf";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e12 || abs < 1e-4)) return value.toExponential(4);
  return compact.format(value);
}

export function int(value: number | bigint): string {
  return integer.format(value);
}

const short = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

/** A step on a chart's axis: "950", "12,500", "250K", "1.5M" (long ones would run together). */
export function step(value: number): string {
  return Math.abs(value) < 100_000 ? integer.format(value) : short.format(value);
}

export function time(ts: Timestamp | undefined): string {
  if (!ts) return "";
  // Local time, to the second, in a fixed sortable shape.
  const d = timestampDate(ts);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function seconds(d: Duration | undefined): number | undefined {
  return d ? Number(d.seconds) + d.nanos / 1e9 : undefined;
}

export function duration(d: Duration | undefined): string {
  const s = seconds(d);
  if (s === undefined) return "";
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function bytes(n: bigint): string {
  const v = Number(n);
  if (v < 1024) return `${v} B`;
  if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${(v / 1024 / 1024).toFixed(1)} MiB`;
}

/** "completed" for RunStatus.COMPLETED (the short form the filter language takes too). */
export function statusName(status: RunStatus): string {
  return (RunStatus[status] ?? "unspecified").toLowerCase();
}

/** A JSON value on one line, cut at `max` characters. */
export function json(value: unknown, max = 160): string {
  const text = JSON.stringify(value) ?? "";
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/** "Dec 4 23:10" (local time): for table cells; the full time is time(). */
export function shortTime(ts: Timestamp | undefined): string {
  if (!ts) return "";
  const d = timestampDate(ts);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${MONTHS[d.getMonth()] ?? ""} ${d.getDate()} ${p(d.getHours())}:${p(d.getMinutes())}`;
}
