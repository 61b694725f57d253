// Builds the dashboard into server/simtrack/server/dashboard/ (committed: the Python package
// ships it, so `pip install .` needs no Node). `npm run build:dashboard`, or
// `node web/dashboard/build.mjs OUTDIR` to build elsewhere (CI diffs that with the committed one).
// Deterministic: same sources and pinned esbuild -> byte-identical files, so CI can rebuild and
// diff. Asset names carry a content hash, so a browser never mixes an old bundle with a new
// index.html (the server sends index.html with Cache-Control: no-cache).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const out = process.argv[2]
  ? resolve(process.argv[2])
  : join(root, "server", "simtrack", "server", "dashboard");

// Start empty: a renamed (re-hashed) asset must not leave its old file behind.
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints: { app: join(here, "src", "main.ts"), app_style: join(here, "style.css") },
  outdir: out,
  entryNames: "[name]-[hash]",
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2022"],
  legalComments: "eof",
  charset: "utf8",
  metafile: true,
  logLevel: "warning",
});

const outputs = Object.keys(result.metafile.outputs).map((p) => basename(p));
const js = outputs.find((f) => f.endsWith(".js"));
const css = outputs.find((f) => f.endsWith(".css"));
if (!js || !css) throw new Error(`expected one .js and one .css, got ${outputs.join(", ")}`);

const html = readFileSync(join(here, "index.html"), "utf8")
  .replace("%APP_JS%", js)
  .replace("%APP_CSS%", css);
writeFileSync(join(out, "index.html"), html);

for (const name of ["index.html", js, css]) {
  const bytes = readFileSync(join(out, name));
  const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(
    `${relative(root, join(out, name)).padEnd(60)} ${kb(bytes.length).padStart(10)}  gzip ${kb(gzipSync(bytes, { level: 9 }).length)}`,
  );
}
