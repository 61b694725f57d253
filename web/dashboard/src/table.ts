// Tables, the filter box (the API's filter language, its errors shown beside it) and paging
// with the API's page tokens.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, isAborted, violations } from "./api.js";
import { fail } from "./app.js";
import { type Child, fill, h } from "./dom.js";

export interface Column<T> {
  title: string;
  cell: (item: T) => Child | Child[];
  /** Right-aligned. */
  num?: boolean;
  /** Wraps long text. */
  wrap?: boolean;
  /** The order_by key that sorts by this column, when the API can. */
  sort?: string;
}

export interface Sort {
  key: string;
  desc: boolean;
}

export function parseSort(orderBy: string): Sort | null {
  const m = /^\s*(\S+)(\s+desc)?\s*$/i.exec(orderBy);
  return m?.[1] ? { key: m[1], desc: Boolean(m[2]) } : null;
}

export function orderBy(sort: Sort | null): string {
  return sort ? `${sort.key}${sort.desc ? " desc" : ""}` : "";
}

export function table<T>(
  columns: Column<T>[],
  items: T[],
  opts: { sort?: Sort | null; onSort?: (key: string) => void; empty?: string; id?: string } = {},
): HTMLElement {
  const head = columns.map((c) => {
    const sorted = opts.sort && c.sort === opts.sort.key;
    const arrow = sorted ? (opts.sort?.desc ? " ▼" : " ▲") : "";
    const cls = [c.num ? "num" : "", c.sort && opts.onSort ? "sortable" : ""].join(" ").trim();
    const sortable = Boolean(c.sort && opts.onSort);
    const onclick = sortable ? () => opts.onSort?.(c.sort ?? "") : undefined;
    const onkeydown = sortable ? (e: Event) => { if ((e as KeyboardEvent).key === "Enter") opts.onSort?.(c.sort ?? ""); } : undefined;
    return h("th", {
      class: cls || undefined, onclick, onkeydown, tabindex: sortable ? 0 : undefined,
      "data-sort": c.sort, title: c.sort ? `order by ${c.sort}` : undefined,
      "aria-sort": sorted ? (opts.sort?.desc ? "descending" : "ascending") : undefined,
    }, c.title + arrow);
  });
  const rows = items.map((item) =>
    h("tr", null, columns.map((c) => h("td", { class: c.num ? "num" : c.wrap ? "wrap" : undefined }, c.cell(item)))),
  );
  if (!items.length) {
    rows.push(h("tr", null, h("td", { colspan: columns.length, class: "muted" }, opts.empty ?? "Nothing here.")));
  }
  return h("div", { class: "scroll" }, h("table", { id: opts.id }, h("thead", null, h("tr", null, head)), h("tbody", null, rows)));
}

/** A filter input that applies on Enter; `error` shows a refusal beside it with a caret. */
export function filterBox(opts: { value: string; placeholder: string; onApply: (text: string) => void; id?: string | undefined }) {
  const input = h("input", { type: "text", value: opts.value, placeholder: opts.placeholder, spellcheck: "false", "aria-label": "filter", id: opts.id });
  const message = h("div", { class: "filter-error error", role: "alert" });
  const apply = () => opts.onApply(input.value.trim());
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") apply();
  });
  const el = h(
    "div",
    { class: "filter" },
    input,
    h("button", { type: "button", onclick: apply }, "Apply"),
    h("button", { type: "button", onclick: () => { input.value = ""; apply(); }, title: "clear the filter" }, "×"),
    message,
  );
  return {
    el,
    input,
    /** Show why the server refused the filter (or order_by); null clears. */
    error(err: unknown | null, fields: string[] = ["filter"], offset = 0) {
      if (err === null) {
        fill(message);
        return;
      }
      const e = ConnectError.from(err);
      const found = violations(e).filter((v) => fields.includes(v.field));
      if (!found.length) {
        fill(message, describe(e));
        return;
      }
      fill(message, found.map((v) => {
        // The server counts from the start of the filter it got: the page may have put a
        // prefix of its own before the user's text (`offset` characters).
        const at = /at position (\d+)/.exec(v.description);
        const pos = at?.[1] !== undefined ? Math.max(0, Number(at[1]) - offset) : null;
        const description = pos === null ? v.description : v.description.replace(/at position \d+/, `at position ${pos}`);
        const text = v.field === "filter" ? input.value.trim() : "";
        const caret = pos !== null && text ? h("pre", null, `${text}\n${" ".repeat(pos)}^`) : null;
        return h("div", null, `${v.field}: ${description}`, caret);
      }));
    },
  };
}

export interface PageOf<T> {
  items: T[];
  next: string;
}

/**
 * A paged, filterable list: `load(token, filter)` fetches one page; `draw(items)` makes the
 * table. Pages are walked with the API's tokens (a stack of them for Previous).
 */
export class ListView<T> {
  readonly el = h("div", { class: "list" });
  private tokens: string[] = [""];
  private page = 0;
  private next = "";
  private inflight: AbortController | null = null; // the load under way (a new one aborts it)
  private readonly body = h("div");
  private readonly pager = h("div", { class: "pager" });
  readonly filter;

  constructor(
    private readonly opts: {
      /** One page; `signal` aborts when a newer load starts or the page goes. */
      load: (token: string, filter: string, signal: AbortSignal) => Promise<PageOf<T>>;
      draw: (items: T[]) => Node;
      filter?: { value: string; placeholder: string; onChange?: (text: string) => void; id?: string; offset?: number };
      toolbar?: Child[];
      signal: AbortSignal;
    },
  ) {
    opts.signal.addEventListener("abort", () => this.inflight?.abort());
    this.filter = opts.filter
      ? filterBox({
          value: opts.filter.value,
          placeholder: opts.filter.placeholder,
          id: opts.filter.id,
          onApply: (text) => {
            opts.filter?.onChange?.(text);
            void this.reload();
          },
        })
      : null;
    this.el.append(
      h("div", { class: "toolbar" }, this.filter?.el, ...(opts.toolbar ?? [])),
      this.body,
      this.pager,
    );
  }

  /** Back to the first page (after a filter, order or column change). */
  async reload(): Promise<void> {
    this.tokens = [""];
    this.page = 0;
    await this.load();
  }

  /** The current page again (live data). */
  async refresh(): Promise<void> {
    await this.load();
  }

  private async load(): Promise<void> {
    // As Chart.load: a new load aborts the one under way (a live refresh when the user applies
    // a filter), so an earlier answer never wipes a refusal or draws stale rows.
    this.inflight?.abort();
    const controller = new AbortController();
    this.inflight = controller;
    const { signal } = controller;
    this.el.classList.add("loading");
    try {
      const { items, next } = await this.opts.load(this.tokens[this.page] ?? "", this.filter?.input.value.trim() ?? "", signal);
      if (signal.aborted) return;
      this.next = next;
      this.filter?.error(null);
      fill(this.body, this.opts.draw(items));
      this.drawPager(items.length);
    } catch (err) {
      if (isAborted(err) || signal.aborted) return;
      // A refused filter or order is the user's to fix, beside the box; the rest is global.
      if (this.filter && err instanceof ConnectError && err.code === Code.InvalidArgument) {
        this.filter.error(err, ["filter", "order_by"], this.opts.filter?.offset ?? 0);
      } else {
        fail(err);
      }
    } finally {
      if (this.inflight === controller) this.el.classList.remove("loading");
    }
  }

  private drawPager(count: number): void {
    fill(
      this.pager,
      h("button", { type: "button", disabled: this.page === 0, onclick: () => { this.page -= 1; void this.load(); } }, "← Previous"),
      h("span", { class: "muted" }, `page ${this.page + 1} · ${count} shown`),
      h("button", {
        type: "button",
        disabled: !this.next,
        onclick: () => {
          this.tokens[this.page + 1] = this.next;
          this.page += 1;
          void this.load();
        },
      }, "Next →"),
    );
  }
}
