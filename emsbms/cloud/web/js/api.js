// The API client: the org and its token from sessionStorage, the token only in the Authorization header.

const KEY = "emsbms.session";

export function session() {
  try { return JSON.parse(sessionStorage.getItem(KEY) || "null"); } catch { return null; }
}
export function saveSession(org, token) { sessionStorage.setItem(KEY, JSON.stringify({ org, token })); }
export function dropSession() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, message, field, missing) {
    super(message);
    this.status = status;
    this.field = field;
    this.missing = missing; // the route does not exist on this server (FastAPI's bare 404)
  }
}

function url(path) {
  const s = session();
  if (!s) throw new ApiError(401, "not signed in", "Authorization", false);
  return [`/api/v1/orgs/${encodeURIComponent(s.org)}${path}`, { Authorization: `Bearer ${s.token}` }];
}

export async function call(method, path, body) {
  const [href, headers] = url(path);
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try { response = await fetch(href, init); } catch (e) {
    throw new ApiError(0, `the service did not answer (${e.message})`, null, false);
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const missing = response.status === 404 && !(data && "field" in data);
    const text = data && typeof data.error === "string" ? data.error
      : missing ? `${method} ${path}: this server has no such endpoint` : `HTTP ${response.status}`;
    throw new ApiError(response.status, text, data ? data.field : null, missing);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const put = (path, body) => call("PUT", path, body);

export function site(name) { return `/sites/${encodeURIComponent(name)}`; }

// Server-sent events read with fetch() streaming, so the token travels in the header (EventSource can't).
export function live(siteName, onEvent, onState) {
  const controller = new AbortController();
  let stopped = false;
  async function run() {
    while (!stopped) {
      try {
        const [href, headers] = url(`${site(siteName)}/live`);
        const response = await fetch(href, { headers, signal: controller.signal, cache: "no-store",
                                             credentials: "omit" });
        if (!response.ok) {
          let text = `HTTP ${response.status}`;
          try { text = (await response.json()).error || text; } catch { /* keep */ }
          onState(`live updates refused: ${text}`);
          return;
        }
        onState("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let name = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) name = line.slice(7);
              else if (line.startsWith("data: ")) data.push(line.slice(6));
            }
            if (!data.length) continue;
            const parsed = JSON.parse(data.join("\n"));
            if (name === "end") { onState(`live updates ended: ${parsed.error}`); return; }
            onEvent(name, parsed);
          }
        }
      } catch (e) {
        if (stopped) return;
        onState(`live updates interrupted (${e.message}); reconnecting`);
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 2000));
    }
  }
  run();
  return () => { stopped = true; controller.abort(); };
}
