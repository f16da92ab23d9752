// Fleet: every site of the organisation, online or offline, last seen, active alarms by severity, config sync.
import { get, site } from "./api.js";
import { ago, el, message, table, time } from "./dom.js";

const SEVERITIES = ["FAULT", "WARNING", "INFO"];

async function alarmCounts(name) {
  try {
    const data = await get(`${site(name)}/alarms`);
    const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
    for (const a of data.active) counts[a.severity] = (counts[a.severity] || 0) + 1;
    const text = SEVERITIES.map((s) => `${s} ${counts[s]}`).join(", ");
    return el("span", { class: counts.FAULT ? "bad" : counts.WARNING ? "warn" : "" }, text);
  } catch (e) {
    return el("span", { class: "muted" }, e.missing ? "alarms not available on this server" : e.message);
  }
}

function sync(s) {
  if (s.desired_version === null) return "no desired configuration";
  const state = s.applied_version === s.desired_version ? "applied" : "pending";
  return `desired v${s.desired_version}, applied ${s.applied_version === null ? "none" : "v" + s.applied_version}`
    + ` (${state})`;
}

export async function fleet(page) {
  page.append(el("h2", {}, "Fleet"));
  const { sites } = await get("/sites");
  if (!sites.length) { page.append(message("This organisation has no sites yet (POST /sites adds one).")); return; }
  const rows = [];
  for (const s of sites) {
    const href = `#/site/${encodeURIComponent(s.site)}`;
    rows.push(el("tr", { "data-site": s.site },
      el("th", { scope: "row" }, el("a", { href }, s.site)),
      el("td", {}, el("span", { class: s.online ? "ok" : "bad" }, s.online ? "online" : "offline")),
      el("td", { title: time(s.last_seen_us) }, ago(s.last_seen_us)),
      el("td", {}, await alarmCounts(s.site)),
      el("td", {}, sync(s))));
  }
  page.append(table("Sites", ["Site", "State", "Last seen", "Active alarms", "Configuration"], rows));
}
