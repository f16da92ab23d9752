// Site: devices with comm state and key channels, bus health, updated live from GET .../live.
import { get, live, site } from "./api.js";
import { ago, clear, el, message, number, table } from "./dom.js";

const KEY = ["CommState", "Soc", "Voltage", "Current", "Temperature", "ChargeMaxCurrent", "DischargeMaxCurrent",
             "ChargeMaxVoltage", "DischargeMinVoltage"];
const BUS = ["State", "BusLoad", "RxRate", "ErrorFrames", "TxErrorCounter", "RxErrorCounter", "LastError"];

export async function sitePage(page, name) {
  page.append(el("h2", {}, `Site ${name}`));
  const status = el("p", { class: "status", "data-live": "" }, "connecting…");
  const summary = el("p", { class: "summary" });
  page.append(status, summary);
  const [shape, readings] = await Promise.all([get(`${site(name)}/devices`), get(`${site(name)}/channels`)]);
  const cells = new Map(); // address -> [value cell, quality cell]

  function cell(address) {
    const value = el("td", { "data-address": address }, "—");
    const quality = el("td", {}, "");
    cells.set(address, [value, quality]);
    return [value, quality];
  }
  function show(address, r) {
    const c = cells.get(address);
    if (!c) return;
    const unit = r.unit ? ` ${r.unit}` : "";
    c[0].textContent = r.value === null ? "—" : `${number(r.value)}${unit}`;
    c[1].textContent = r.quality || "";
    c[0].className = r.quality && r.quality !== "ok" ? "warn" : "";
  }

  if (!shape.devices.length) page.append(message("No devices known yet: the edge has not sent its birth."));
  for (const d of shape.devices) {
    const rows = KEY.filter((k) => `${d.name}/${k}` in readings || `${d.name}/${k}` in shape.channels)
      .map((k) => el("tr", {}, el("th", { scope: "row" }, k), ...cell(`${d.name}/${k}`)));
    const all = Object.keys(readings).filter((a) => a.startsWith(`${d.name}/`) && !KEY.includes(a.slice(d.name.length + 1)))
      .map((a) => el("tr", {}, el("th", { scope: "row" }, a.slice(d.name.length + 1)), ...cell(a)));
    page.append(el("article", { class: "card", "aria-label": `Device ${d.name}` },
      el("h3", {}, d.name),
      el("p", { class: "muted" }, `${d.profile} ${d.version} · ${d.protocol} on ${d.bus}`),
      table("Key channels", ["Channel", "Value", "Quality"], rows),
      el("details", {}, el("summary", {}, `Other channels (${all.length})`),
         table("Other channels", ["Channel", "Value", "Quality"], all))));
  }
  const buses = [...new Set(shape.devices.map((d) => d.bus))].sort();
  const busRows = [];
  for (const b of buses) {
    for (const k of BUS) {
      if (`${b}/${k}` in readings) busRows.push(el("tr", {}, el("th", { scope: "row" }, `${b} ${k}`), ...cell(`${b}/${k}`)));
    }
  }
  page.append(el("article", { class: "card", "aria-label": "Bus health" }, el("h3", {}, "Bus health"),
    busRows.length ? table("Bus health", ["Bus channel", "Value", "Quality"], busRows) : message("No bus health yet.")));
  for (const [a, r] of Object.entries(readings)) show(a, r);

  return live(name, (kind, data) => {
    if (kind === "channels") for (const [a, r] of Object.entries(data)) show(a, r);
    if (kind === "site") {
      clear(summary).append(el("span", { class: data.online ? "ok" : "bad" }, data.online ? "online" : "offline"),
        ` · last seen ${ago(data.last_seen_us)} · configuration ${data.config.status || "none"}`);
    }
  }, (text) => { status.textContent = text === "live" ? "Live: updates arrive without reloading." : text; });
}
