// Commands: a form over the device's command channels with the profile's unit and limits; each result shown.
import { call, get, post, site } from "./api.js";
import { clear, el, message, number, table, time } from "./dom.js";

function limits(info) {
  const low = info.min === null || info.min === undefined ? null : number(info.min);
  const high = info.max === null || info.max === undefined ? null : number(info.max);
  const unit = info.unit ? ` ${info.unit}` : "";
  if (low === null && high === null) return `no limits declared${unit ? "; unit" + unit : ""}`;
  return `${low ?? "−∞"} … ${high ?? "∞"}${unit}`;
}

// The site's active overrides (as its edge reports them) with a Cancel button each; refreshed every 5 s.
async function overridesSection(page, name) {
  const overrides = el("div", { id: "overrides" });
  const cancelResult = el("p", { id: "override-result", role: "status" });
  async function listOverrides() {
    let data;
    try { data = await get(`${site(name)}/overrides`); } catch (e) {
      overrides.replaceChildren(message(e.missing ? "Overrides are not available: this server has no"
        + " GET /sites/{site}/overrides." : e.message, e.missing ? "note" : "error"));
      return;
    }
    const rows = data.overrides.map((o) => el("tr", { "data-override": o.address },
      el("th", { scope: "row" }, o.address), el("td", {}, number(o.value)), el("td", {}, o.source || ""),
      el("td", {}, `${time(o.expires_us)} (in ${Math.max(0, Math.round(o.expires_us / 1e6 - Date.now() / 1000))} s)`),
      el("td", {}, el("button", { type: "button", "aria-label": `Cancel the override of ${o.address}`,
                                  onclick: (ev) => cancel(ev.currentTarget, o.address) }, "Cancel"))));
    overrides.replaceChildren(rows.length
      ? table("Active overrides", ["Address", "Value", "Source", "Expires", ""], rows)
      : message("No active overrides."));
  }
  async function cancel(button, address) {
    button.disabled = true;
    try {
      const r = await call("DELETE", `${site(name)}/overrides/${address.split("/").map(encodeURIComponent).join("/")}`);
      cancelResult.textContent = `Cancel ${address}: ${r.status}${r.detail ? " — " + r.detail : ""}`;
    } catch (e) { cancelResult.textContent = `Cancel ${address}: ${e.message}`; }
    await listOverrides();
  }
  page.append(el("h3", {}, "Active overrides"), cancelResult, overrides);
  await listOverrides();
  const timer = setInterval(() => { if (!overrides.contains(document.activeElement)) listOverrides(); }, 5000);
  return { refresh: listOverrides, stop: () => clearInterval(timer) };
}

export async function commandsPage(page, name) {
  page.append(el("h2", {}, `Commands · ${name}`));
  const shape = await get(`${site(name)}/devices`);
  const commands = Object.entries(shape.channels).filter(([, c]) => c.kind === "command");
  if (!commands.length) {
    page.append(message("No command channels known for this site yet."));
    return (await overridesSection(page, name)).stop;
  }
  const devices = [...new Set(commands.map(([a]) => a.split("/")[0]))].sort();
  const device = el("select", { id: "cmd-device" }, devices.map((d) => el("option", { value: d }, d)));
  const channel = el("select", { id: "cmd-channel" });
  const value = el("input", { id: "cmd-value", type: "text", inputmode: "decimal", required: true,
                              "aria-describedby": "cmd-limits" });
  const timeout = el("input", { id: "cmd-timeout", type: "number", min: "1", max: "60", step: "1", value: "10" });
  const about = el("p", { id: "cmd-limits", class: "limits" });
  const submit = el("button", { type: "submit" }, "Send");
  const results = el("tbody", { id: "cmd-results" });
  let section = null;

  function fill() {
    clear(channel).append(...commands.filter(([a]) => a.startsWith(`${device.value}/`))
      .map(([a]) => el("option", { value: a }, a.slice(device.value.length + 1))));
    describe();
  }
  function describe() {
    const info = shape.channels[channel.value] || {};
    about.textContent = `Unit: ${info.unit || "none"} · limits: ${limits(info)}${info.description ? " · " + info.description : ""}`;
  }
  async function send(event) {
    event.preventDefault();
    const text = value.value.trim();
    const numeric = Number(text);
    const address = channel.value;
    const row = el("tr", {}, el("td", {}, address), el("td", {}, text), el("td", { class: "cmd-status" }, "sending…"),
                   el("td", { class: "cmd-detail" }, ""), el("td", { class: "cmd-rtt" }, ""));
    results.prepend(row);
    const [status, detail, rtt] = row.querySelectorAll(".cmd-status, .cmd-detail, .cmd-rtt");
    if (text === "" || !Number.isFinite(numeric)) {
      status.textContent = "not sent";
      detail.textContent = `value: expected a number, found ${JSON.stringify(text)}`;
      return;
    }
    submit.disabled = true;
    try {
      const r = await post(`${site(name)}/commands`, { address, value: numeric, timeout_s: Number(timeout.value) || 10 });
      status.textContent = r.status;
      status.className = `cmd-status ${r.status === "acked" ? "ok" : "bad"}`;
      detail.textContent = r.detail;
      rtt.textContent = r.round_trip_ms === null ? "—" : `${number(r.round_trip_ms)} ms`;
    } catch (e) {
      status.textContent = "refused";
      status.className = "cmd-status bad";
      detail.textContent = e.message;
    } finally { submit.disabled = false; if (section) section.refresh(); }
  }
  device.addEventListener("change", fill);
  channel.addEventListener("change", describe);
  fill();
  page.append(el("form", { class: "controls", onsubmit: send, novalidate: true },
    el("label", { for: "cmd-device" }, "Device"), device,
    el("label", { for: "cmd-channel" }, "Command channel"), channel,
    el("label", { for: "cmd-value" }, "Value"), value, about,
    el("label", { for: "cmd-timeout" }, "Timeout (s)"), timeout, submit),
    message("The edge checks every command against the profile again; a refused command is not sent to the BMS."),
    table("Results (this tab)", ["Address", "Value", "Result", "Reason", "Round trip"], results));
  section = await overridesSection(page, name);
  return section.stop;
}
