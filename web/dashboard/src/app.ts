// The page shell: hash routes, the error banner, and the API-key prompt.
import { checkKey, describe, isAborted, isUnauthenticated, storedKey, storeKey } from "./api.js";
import { fill, h } from "./dom.js";

export interface PageContext {
  /** Where the page draws. */
  root: HTMLElement;
  /** The route's parts after the page name (`#/runs/<id>` -> ["<id>"]). */
  parts: string[];
  /** The route's query (`#/compare?runs=a,b`). */
  query: URLSearchParams;
  /** Aborted when the user leaves the page: streams and pending calls stop. */
  signal: AbortSignal;
}

export type Page = (ctx: PageContext) => Promise<void>;

let routes: Record<string, Page> = {};
let current: AbortController | null = null;

export function start(table: Record<string, Page>): void {
  routes = table;
  window.addEventListener("hashchange", () => void render());
  showKeyStatus();
  void render();
}

function route(): { name: string; parts: string[]; query: URLSearchParams } {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path = "", search = ""] = hash.split("?", 2);
  const [name = "", ...parts] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name, parts, query: new URLSearchParams(search) };
}

/** Draw the page of the current hash (again), abandoning the previous one. */
export async function render(): Promise<void> {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { name, parts, query } = route();
  const page = routes[name];
  const root = document.getElementById("app") as HTMLElement;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    a.classList.toggle("active", a.dataset.nav === (name || "experiments"));
  }
  banner(null);
  fill(root);
  if (!page) {
    fill(root, h("p", { class: "notice" }, `No page here: #/${name}. `), h("a", { href: "#/" }, "Home"));
    return;
  }
  try {
    await page({ root, parts, query, signal: controller.signal });
  } catch (err) {
    if (!controller.signal.aborted) fail(err);
  }
}

/** Change the hash's query without drawing the page again (the page already shows it). */
export function replaceQuery(query: URLSearchParams): void {
  const [path = ""] = location.hash.split("?", 1);
  const q = query.toString();
  history.replaceState(null, "", q ? `${path}?${q}` : path);
}

/** A failed call: a key prompt when the server wants a key, else the banner. */
export function fail(err: unknown): void {
  if (isAborted(err)) return;
  if (isUnauthenticated(err)) {
    promptForKey(storedKey() ? "The stored API key was refused; enter another." : null);
    return;
  }
  banner(describe(err));
}

export function banner(text: string | null): void {
  const el = document.getElementById("banner");
  if (!el) return;
  el.hidden = text === null;
  el.textContent = text ?? "";
}

function showKeyStatus(): void {
  const el = document.getElementById("key-status");
  if (!el) return;
  if (!storedKey()) {
    fill(el);
    return;
  }
  fill(
    el,
    "API key set · ",
    h("a", { href: "#", onclick: (e) => { e.preventDefault(); storeKey(null); showKeyStatus(); void render(); } }, "forget"),
  );
}

let prompting = false;

/** Ask for an API key; a key the server refuses is not kept. */
export function promptForKey(why: string | null): void {
  if (prompting) return;
  prompting = true;
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", placeholder: "stk_…", required: true });
  const message = h("p", { class: "error", id: "key-error", role: "alert" }, why ?? "");
  const submit = h("button", { type: "submit", class: "primary" }, "Use key");
  const form = h(
    "form",
    { id: "key-form" },
    h("h2", null, "API key needed"),
    h("p", null, "This simtrack server requires an API key (", h("code", null, "simtrack keys create"), "). It is kept in this browser tab only."),
    input,
    message,
    h("div", { class: "row" }, submit),
  );
  const modal = h("div", { class: "modal" }, form);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    message.textContent = "Checking…";
    void checkKey(key).then((problem) => {
      submit.disabled = false;
      if (problem) {
        message.textContent = problem;
        input.select();
        return;
      }
      storeKey(key);
      modal.remove();
      prompting = false;
      showKeyStatus();
      void render();
    });
  });
  document.body.append(modal);
  input.focus();
}
