// Alarms: the site's active alarms (acknowledge) and their history.
import { get, post, site } from "./api.js";
import { el, message, table, time } from "./dom.js";

export async function alarmsPage(page, name) {
  page.append(el("h2", {}, `Alarms · ${name}`));
  const result = el("p", { id: "alarm-result", role: "status" });
  const body = el("div");
  page.append(result, body);

  async function load() {
    let data;
    try {
      data = await get(`${site(name)}/alarms?limit=200`);
    } catch (e) {
      body.replaceChildren(message(e.missing
        ? "Alarms are not available: this server has no alarm endpoints yet (GET /sites/{site}/alarms)."
        : e.message, "error"));
      return;
    }
    const active = data.active.map((a) => el("tr", { "data-alarm": a.id },
      el("th", { scope: "row" }, a.rule), el("td", {}, a.device), el("td", { class: a.severity.toLowerCase() }, a.severity),
      el("td", {}, a.state), el("td", {}, a.acked ? "yes" : "no"), el("td", {}, a.value ?? "—"), el("td", {}, a.text || ""),
      el("td", {}, a.acked ? "" : el("button", { type: "button", "aria-label": `Acknowledge ${a.id}`,
                                                 onclick: (ev) => ack(ev.currentTarget, a.id) }, "Acknowledge"))));
    const past = data.history.map((a) => el("tr", {},
      el("td", {}, time(a.timestamp_us)), el("th", { scope: "row" }, a.rule), el("td", {}, a.device),
      el("td", {}, a.severity), el("td", {}, `${a.previous || "—"} → ${a.state}`), el("td", {}, a.acked ? "yes" : "no"),
      el("td", {}, a.text || "")));
    body.replaceChildren(
      el("h3", {}, "Active"),
      active.length ? table("Active alarms", ["Rule", "Device", "Severity", "State", "Acked", "Value", "Text", ""], active)
        : message("No active alarms."),
      el("h3", {}, "Past"),
      past.length ? table("Alarm history", ["Time", "Rule", "Device", "Severity", "Change", "Acked", "Text"], past)
        : message("No alarm history."));
  }
  async function ack(button, id) {
    button.disabled = true;
    try {
      const r = await post(`${site(name)}/alarms/${encodeURIComponent(id)}/ack`);
      result.textContent = `Acknowledge ${id}: ${r.status}${r.detail ? " — " + r.detail : ""}`
        + (r.round_trip_ms === null ? "" : ` (${r.round_trip_ms} ms)`);
    } catch (e) { result.textContent = `Acknowledge ${id}: ${e.message}`; }
    await load();
  }
  await load();
  const timer = setInterval(() => { if (!body.contains(document.activeElement)) load(); }, 5000);
  return () => clearInterval(timer);
}
