// The simtrack dashboard: a typed client of the same API as every other (see api.ts), one page
// per hash route so the server needs no fallback routing.
import { start } from "./app.js";
import { comparePage } from "./pages/compare.js";
import { experimentsPage } from "./pages/experiments.js";
import { runPage } from "./pages/run.js";
import { runsPage } from "./pages/runs.js";
import { scenarioPage, scenariosPage } from "./pages/scenarios.js";

start({
  "": experimentsPage,
  experiments: (ctx) => (ctx.parts.length ? runsPage(ctx) : experimentsPage(ctx)),
  runs: (ctx) => (ctx.parts.length ? runPage(ctx) : runsPage(ctx)),
  compare: comparePage,
  scenarios: (ctx) => (ctx.parts.length ? scenarioPage(ctx) : scenariosPage(ctx)),
});
