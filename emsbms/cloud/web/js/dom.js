// DOM helpers: every text goes in through textContent, never as markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

export function time(us) {
  if (us === null || us === undefined) return "never";
  return new Date(us / 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function ago(us) {
  if (us === null || us === undefined) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - us / 1e6));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

export function number(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(Math.abs(value) >= 100 ? 1 : 2);
}

export function table(caption, headers, rows) {
  return el("div", { class: "scroll" }, el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    rows instanceof HTMLTableSectionElement ? rows : el("tbody", {}, rows)));
}

export function message(text, kind = "note") {
  return el("p", { class: kind, role: kind === "error" ? "alert" : null }, text);
}
