// Talking to the trainyard API from the dashboard: the key (session storage only), JSON
// calls, and the job event stream (fetch-based SSE, since EventSource cannot send a key).

const KEY = "trainyard.key";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err.details;
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${getKey()}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function download(path, name) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${getKey()}` } });
  if (!response.ok) throw new ApiError(response.status, await response.json());
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Follow a job's events; onEvent(type, data) per frame. Reconnects after a dropped
// connection with the last event id and the last metric step seen. Returns a stop function.
export function followJob(jobId, onEvent) {
  let lastId = 0;
  let lastStep = 0;
  let stopped = false;
  const controller = { abort: null };

  async function once() {
    const ac = new AbortController();
    controller.abort = () => ac.abort();
    const url = `/v1/jobs/${encodeURIComponent(jobId)}/events?metrics_after_step=${lastStep}`;
    const response = await fetch(url, {
      headers: {
        Authorization: `Bearer ${getKey()}`,
        Accept: "text/event-stream",
        "Last-Event-ID": String(lastId),
      },
      signal: ac.signal,
    });
    if (!response.ok) throw new ApiError(response.status, await response.json());
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const fields = { event: "message", data: "", id: null };
        for (const line of frame.split("\n")) {
          const sep = line.indexOf(":");
          if (sep <= 0) continue;
          const name = line.slice(0, sep);
          const val = line.slice(sep + 1).replace(/^ /, "");
          if (name === "data") fields.data += val;
          else fields[name] = val;
        }
        if (fields.id) lastId = Number(fields.id);
        const data = fields.data ? JSON.parse(fields.data) : {};
        if (fields.event === "metrics") {
          for (const p of data.points) lastStep = Math.max(lastStep, p.step);
        }
        onEvent(fields.event, data);
        if (fields.event === "end") return true;
      }
    }
  }

  (async () => {
    let delay = 500;
    while (!stopped) {
      try {
        if (await once()) return;
        delay = 500;
      } catch (err) {
        if (stopped) return;
        if (err instanceof ApiError) {
          onEvent("error", { message: err.message });
          return;
        }
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();
  return () => {
    stopped = true;
    if (controller.abort) controller.abort();
  };
}
