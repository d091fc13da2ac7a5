// The trainyard dashboard: jobs (live), a job (live charts, events, spec, checkpoints,
// controls), datasets (validation report), models (files, chat, sampling), nodes.
// Everything a user wrote (names, messages, dataset lines) goes into the page as text
// nodes: this file never assigns HTML.

import { api, clearKey, download, followJob, getKey, setKey } from "./api.js";

const main = document.getElementById("main");
let cleanup = [];

// h("td", {class: "x"}, "text", child): an element; strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = String(v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = (v) => (v === null || v === undefined ? "-" : typeof v === "number" ? +v.toPrecision(4) : v);
const when = (t) => (t ? new Date(t).toLocaleString() : "-");
const statusBadge = (s) => h("span", { class: `status status-${s}`, "data-status": s }, s);

function table(columns, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows),
  );
}

function showError(err) {
  main.replaceChildren(h("p", { class: "error" }, err.message || String(err)));
}

function every(ms, fn) {
  const id = setInterval(fn, ms);
  cleanup.push(() => clearInterval(id));
}

// pages

function login() {
  const key = h("input", { type: "password", name: "key", autocomplete: "off", id: "key" });
  const msg = h("p", { class: "error" });
  const form = h(
    "form",
    { class: "login card" },
    h("h1", {}, "Sign in"),
    h("label", { for: "key" }, "API key"),
    key,
    h("p", { class: "muted" }, "The key stays in this tab's session storage."),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    msg,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setKey(key.value.trim());
    try {
      await api("GET", "/v1/jobs?limit=1");
      location.hash = "#/jobs";
      route();
    } catch (err) {
      clearKey();
      msg.textContent = err.message;
    }
  });
  main.replaceChildren(form);
}

async function jobsPage() {
  const body = h("tbody");
  main.replaceChildren(
    h("h1", {}, "Jobs"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Job", "Name", "Type", "Status", "Progress", "Loss", "Created"].map((c) => h("th", {}, c)))), body),
  );
  async function refresh() {
    const page = await api("GET", "/v1/jobs?limit=100");
    body.replaceChildren(
      ...page.data.map((j) =>
        h(
          "tr",
          { "data-job": j.id },
          h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id)),
          h("td", { class: "wrap job-name" }, j.name ?? ""),
          h("td", {}, j.type),
          h("td", {}, statusBadge(j.status)),
          h("td", {}, h("progress", { max: j.progress.max_steps || 1, value: j.progress.step }), ` ${j.progress.step}/${j.progress.max_steps}`),
          h("td", {}, fmt(j.progress.loss)),
          h("td", {}, when(j.created_at)),
        ),
      ),
    );
  }
  await refresh();
  every(2000, () => refresh().catch(() => {}));
}

// Axis labels that stay readable for a learning rate of 3e-4 and for 20,000 tokens/s.
const tick = (v) => (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : +v.toPrecision(3));

const CHARTS = [
  ["loss", "loss"],
  ["val_loss", "val_loss"],
  ["lr", "learning rate"],
  ["tokens_per_s", "tokens/s"],
  ["mfu", "MFU"],
];

function makeChart(name, title, holder) {
  const box = h("div", { class: "chart", "data-metric": name, "data-points": "0" }, h("h3", {}, title));
  holder.append(box);
  const series = { steps: [], values: [] };
  const plot = new uPlot(
    {
      width: 360,
      height: 180,
      legend: { show: false },
      scales: { x: { time: false } },
      series: [{ label: "step" }, { label: title, stroke: "#2f6fde", width: 1.5, spanGaps: true }],
      axes: [{}, { size: 60, values: (u, ticks) => ticks.map(tick) }],
    },
    [[], []],
    box,
  );
  return {
    add(points) {
      for (const p of points) {
        const last = series.steps[series.steps.length - 1];
        if (last !== undefined && p.step <= last) continue;
        series.steps.push(p.step);
        series.values.push(p.value);
      }
      plot.setData([series.steps, series.values]);
      box.setAttribute("data-points", String(series.steps.length));
    },
    destroy: () => plot.destroy(),
  };
}

async function jobPage(id) {
  const job = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  const status = h("span", { id: "job-status" });
  const progress = h("span", { id: "job-progress" });
  const error = h("p", { class: "error", id: "job-error" });
  const buttons = {};
  for (const action of ["cancel", "pause", "resume"]) {
    buttons[action] = h("button", { type: "button", id: `job-${action}`, onclick: () => act(action) }, action[0].toUpperCase() + action.slice(1));
  }
  const charts = h("div", { class: "charts" });
  const log = h("tbody", { id: "job-events" });
  const checkpoints = h("tbody", { id: "job-checkpoints" });
  main.replaceChildren(
    h("h1", {}, "Job ", h("span", { class: "job-name" }, job.name ?? ""), " ", h("span", { class: "muted" }, job.id)),
    h("div", { class: "card row" }, status, progress, buttons.cancel, buttons.pause, buttons.resume),
    error,
    charts,
    h("h2", {}, "Events"),
    h("div", { class: "log" }, h("table", {}, h("thead", {}, h("tr", {}, ["Time", "Type", "Message"].map((c) => h("th", {}, c)))), log)),
    h("h2", {}, "Checkpoints"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Step", "Attempt", "Metrics", "Created"].map((c) => h("th", {}, c)))), checkpoints),
    h("h2", {}, "Resolved spec"),
    h("pre", { id: "job-spec" }, JSON.stringify(job.spec, null, 2)),
  );
  const plots = Object.fromEntries(CHARTS.map(([name, title]) => [name, makeChart(name, title, charts)]));
  cleanup.push(() => Object.values(plots).forEach((p) => p.destroy()));

  function render(j) {
    status.replaceChildren(statusBadge(j.status));
    const p = j.progress;
    progress.replaceChildren(
      h("progress", { max: p.max_steps || 1, value: p.step }),
      ` step ${p.step}/${p.max_steps} · loss ${fmt(p.loss)} · val_loss ${fmt(p.val_loss)} · ${fmt(p.tokens_per_s)} tok/s · ETA ${fmt(p.eta_seconds)}s · attempt ${j.attempt}`,
    );
    error.textContent = j.error ? `${j.error.code}: ${j.error.message ?? ""}` : "";
    const done = ["succeeded", "failed", "cancelled"].includes(j.status);
    buttons.cancel.disabled = done || j.status === "cancelling";
    buttons.pause.disabled = done || j.status !== "running";
    buttons.resume.disabled = j.status !== "paused";
  }

  async function refresh() {
    render(await api("GET", `/v1/jobs/${encodeURIComponent(id)}`));
    const cps = await api("GET", `/v1/jobs/${encodeURIComponent(id)}/checkpoints`);
    checkpoints.replaceChildren(
      ...cps.data.map((c) => h("tr", {}, h("td", {}, c.step), h("td", {}, c.attempt), h("td", {}, JSON.stringify(c.metrics)), h("td", {}, when(c.created_at)))),
    );
  }

  async function act(action) {
    try {
      render(await api("POST", `/v1/jobs/${encodeURIComponent(id)}/${action}`));
    } catch (err) {
      error.textContent = `${action}: ${err.message}`;
    }
  }

  let pending;
  const soon = () => {
    clearTimeout(pending);
    pending = setTimeout(() => refresh().catch(() => {}), 300);
  };
  cleanup.push(() => clearTimeout(pending));
  render(job);
  const stop = followJob(id, (type, data) => {
    if (type === "metrics") {
      const byName = {};
      for (const p of data.points) (byName[p.name] ??= []).push(p);
      for (const [name, points] of Object.entries(byName)) plots[name]?.add(points);
    } else if (type === "end" || type === "error") {
      soon();
    } else {
      log.append(h("tr", {}, h("td", {}, when(data.created_at)), h("td", {}, data.type), h("td", { class: "wrap" }, data.message ?? "")));
      soon();
    }
  });
  cleanup.push(stop);
  every(2000, () => refresh().catch(() => {}));
}

async function datasetsPage() {
  const page = await api("GET", "/v1/datasets?limit=100");
  main.replaceChildren(
    h("h1", {}, "Datasets"),
    table(
      ["Dataset", "Name", "Status", "Kind", "Records", "Bytes", "Created"],
      page.data.map((d) =>
        h(
          "tr",
          { "data-dataset": d.id },
          h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.id)),
          h("td", { class: "wrap dataset-name" }, d.name),
          h("td", {}, statusBadge(d.status)),
          h("td", {}, d.kind),
          h("td", {}, fmt(d.records)),
          h("td", {}, d.bytes),
          h("td", {}, when(d.created_at)),
        ),
      ),
    ),
  );
}

async function datasetPage(id) {
  const d = await api("GET", `/v1/datasets/${encodeURIComponent(id)}`);
  main.replaceChildren(
    h("h1", {}, "Dataset ", h("span", { class: "dataset-name" }, d.name), " ", h("span", { class: "muted" }, d.id)),
    h(
      "div",
      { class: "card" },
      statusBadge(d.status),
      ` ${d.format}, ${d.kind}, ${fmt(d.records)} records, ${d.bytes} bytes, sha256 ${d.sha256}`,
    ),
    h("h2", {}, "Validation"),
    d.errors.length
      ? table(["Line", "Problem"], d.errors.map((e) => h("tr", {}, h("td", {}, fmt(e.line)), h("td", { class: "wrap" }, e.message))))
      : h("p", { class: "muted" }, "No problems found."),
  );
}

async function modelsPage() {
  const page = await api("GET", "/v1/models?limit=100");
  main.replaceChildren(
    h("h1", {}, "Models"),
    table(
      ["Model", "Name", "Arch", "Job", "Created"],
      page.data.map((m) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/models/${m.id}` }, m.id)),
          h("td", { class: "wrap" }, m.name ?? ""),
          h("td", {}, m.arch),
          h("td", {}, m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, m.job_id) : "-"),
          h("td", {}, when(m.created_at)),
        ),
      ),
    ),
  );
}

async function modelPage(id) {
  const m = await api("GET", `/v1/models/${encodeURIComponent(id)}`);
  const path = `/v1/models/${encodeURIComponent(id)}/generate`;
  const chatLog = h("div", { class: "chatlog", id: "chat-log" });
  const chatIn = h("input", { type: "text", id: "chat-input", placeholder: "Say something" });
  const messages = [];
  const chatForm = h("form", {}, chatIn, h("button", { type: "submit" }, "Send"));
  chatForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const said = chatIn.value;
    if (!said.trim()) return;
    chatIn.value = "";
    messages.push({ role: "user", content: said });
    chatLog.append(h("div", {}, h("span", { class: "who" }, "you"), said));
    try {
      const reply = await api("POST", path, { messages, max_new_tokens: 128, temperature: 0.7 });
      messages.push({ role: "assistant", content: reply.text });
      chatLog.append(h("div", {}, h("span", { class: "who" }, "model"), reply.text));
    } catch (err) {
      messages.pop();
      chatLog.append(h("div", { class: "error" }, err.message));
    }
  });
  const prompt = h("textarea", { id: "sample-prompt", placeholder: "A prompt to continue" });
  const sample = h("pre", { id: "sample-out" });
  const sampleForm = h("form", {}, prompt, h("button", { type: "submit" }, "Sample"));
  sampleForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const reply = await api("POST", path, { prompt: prompt.value, max_new_tokens: 120, temperature: 0.8, top_k: 20 });
      sample.textContent = prompt.value + reply.text;
    } catch (err) {
      sample.textContent = err.message;
    }
  });
  main.replaceChildren(
    h("h1", {}, "Model ", h("span", {}, m.name ?? ""), " ", h("span", { class: "muted" }, m.id)),
    h("div", { class: "card" }, `${m.arch} · from job ${m.job_id ?? "-"}`),
    h("h2", {}, "Files"),
    table(
      ["File", "Bytes", ""],
      m.files.map((f) => h("tr", {}, h("td", {}, f.name), h("td", {}, f.bytes), h("td", {}, h("button", { type: "button", onclick: () => download(f.url, f.name).catch(showError) }, "Download")))),
    ),
    h("h2", {}, "Chat (fine-tuned chat models)"),
    h("div", { class: "card" }, chatLog, chatForm),
    h("h2", {}, "Sample (base models)"),
    h("div", { class: "card" }, sampleForm, sample),
  );
}

const bytes = (n) => (n ? `${+(n / 2 ** 30).toPrecision(3)} GiB` : "-");
const jobLink = (id) => h("a", { href: `#/jobs/${id}` }, id);

async function nodesPage() {
  main.replaceChildren(h("h1", {}, "Nodes"));
  try {
    const page = await api("GET", "/v1/nodes");
    main.append(
      table(
        ["Node", "Status", "Pool", "Accelerator", "Free slots", "Devices", "Memory", "Running", "Heartbeat"],
        page.data.map((n) =>
          h(
            "tr",
            { "data-node": n.id },
            h("td", { class: "wrap" }, n.name, h("br"), h("span", { class: "muted" }, n.id)),
            h("td", {}, statusBadge(n.status)),
            h("td", {}, n.pool),
            h("td", {}, n.accelerator),
            h("td", {}, `${n.free_slots} of ${n.slots}`),
            h("td", { class: "wrap" }, n.devices.join(", ") || "-"),
            h("td", {}, bytes(n.memory_bytes)),
            h("td", { class: "node-attempts" }, n.attempts.map((a) => h("div", {}, jobLink(a.job_id), ` attempt ${a.attempt}, node ${a.rank + 1} of ${a.nodes}, ${a.slots} slots, ${a.status}`))),
            h("td", {}, when(n.last_heartbeat_at)),
          ),
        ),
      ),
    );
  } catch (err) {
    if (err.status !== 403) throw err;
    main.append(h("p", { class: "muted", id: "nodes-admin-only" }, "Nodes are shown to admin keys (trainyard keys create --admin)."));
  }
  const waiting = await Promise.all(
    ["queued", "preparing", "paused"].map((s) => api("GET", `/v1/jobs?status=${s}&limit=100`)),
  );
  const jobs = waiting.flatMap((p) => p.data).sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
  main.append(
    h("h2", {}, "Queue"),
    h("p", { class: "muted" }, "This project's jobs waiting for a node, oldest first."),
    table(
      ["Job", "Name", "Status", "Priority", "Why it waits", "Created"],
      jobs.map((j) => h("tr", { "data-job": j.id }, h("td", {}, jobLink(j.id)), h("td", { class: "wrap" }, j.name ?? ""), h("td", {}, statusBadge(j.status)), h("td", {}, j.spec?.resources?.priority ?? "-"), h("td", { class: "wrap" }, j.status_reason ?? ""), h("td", {}, when(j.created_at)))),
    ),
  );
}

// routing

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, jobPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/datasets\/([\w-]+)$/, datasetPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/models\/([\w-]+)$/, modelPage],
  [/^#\/models$/, modelsPage],
  [/^#\/nodes$/, nodesPage],
];

function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const signedIn = Boolean(getKey());
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) return login();
  const hash = location.hash || "#/jobs";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
  for (const [pattern, page] of ROUTES) {
    const match = hash.match(pattern);
    if (match) return page(...match.slice(1)).catch(showError);
  }
  location.hash = "#/jobs";
}

document.getElementById("signout").addEventListener("click", () => {
  clearKey();
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();
