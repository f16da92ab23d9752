// Plot: any channels over a chosen window, drawn by uPlot (drag to zoom, double-click to reset).
import { get, site } from "./api.js";
import { el, message } from "./dom.js";

const WINDOWS = [["5m", 300], ["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400]];
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];

function merge(seriesList) {
  // one x axis (seconds) for all series: the union of their times, null where a series has no point
  const times = [...new Set(seriesList.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const ys = seriesList.map((s) => {
    const y = new Array(times.length).fill(null);
    for (const [t, v] of s.points) y[index.get(t)] = v;
    return y;
  });
  return [times.map((t) => t / 1e6), ...ys];
}

export async function plotPage(page, name) {
  page.append(el("h2", {}, `Plot · ${name}`));
  const readings = await get(`${site(name)}/channels`);
  const numeric = Object.keys(readings).filter((a) => typeof readings[a].value === "number");
  // chosen at first: the first device's Voltage and Current (else the first numeric channel)
  const first = numeric.find((a) => a.endsWith("/Voltage")) || numeric[0];
  const second = first && first.endsWith("/Voltage") ? first.replace(/Voltage$/, "Current") : null;
  const picker = el("select", { id: "plot-channels", multiple: true, size: Math.min(8, Math.max(3, numeric.length)) },
    numeric.map((a) => el("option", { value: a, selected: a === first || a === second }, a)));
  const windowSelect = el("select", { id: "plot-window" },
    WINDOWS.map(([label, s]) => el("option", { value: s, selected: s === 900 }, `last ${label}`)));
  const error = el("p", { class: "error", role: "alert" });
  const chart = el("div", { class: "chart", role: "img", "aria-label": "Chart of the chosen channels" });
  let plot = null;

  async function draw(event) {
    if (event) event.preventDefault();
    error.textContent = "";
    const chosen = [...picker.selectedOptions].map((o) => o.value);
    if (!chosen.length) { error.textContent = "Choose at least one channel."; return; }
    const to = new Date();
    const from = new Date(to.getTime() - Number(windowSelect.value) * 1000);
    const seconds = Number(windowSelect.value);
    const bucket = seconds > 3600 ? `${Math.round(seconds / 600)}s` : null;
    try {
      const all = await Promise.all(chosen.map((a) => {
        const q = new URLSearchParams({ address: a, from: from.toISOString(), to: to.toISOString() });
        if (bucket) q.set("bucket", bucket);
        return get(`${site(name)}/series?${q}`);
      }));
      const data = merge(all);
      const opts = {
        width: Math.max(280, chart.clientWidth || 600), height: 320,
        cursor: { drag: { x: true, y: false } },
        // the second channel on its own right-hand axis (a voltage and a current differ in scale)
        series: [{}, ...chosen.map((a, i) => ({ label: `${a}${readings[a].unit ? " (" + readings[a].unit + ")" : ""}`,
                                               scale: i === 1 ? "y2" : "y", stroke: COLOURS[i % COLOURS.length],
                                               spanGaps: true }))],
        axes: chosen.length > 1 ? [{}, { scale: "y" }, { scale: "y2", side: 1, grid: { show: false } }]
          : [{}, { scale: "y" }],
      };
      if (plot) plot.destroy();
      chart.replaceChildren();
      plot = new window.uPlot(opts, data, chart);
      chart.setAttribute("data-points", String(data[0].length));
    } catch (e) { error.textContent = e.message; }
  }

  page.append(el("form", { class: "controls", onsubmit: draw },
    el("label", { for: "plot-channels" }, "Channels (Ctrl or Shift to choose several)"), picker,
    el("label", { for: "plot-window" }, "Window"), windowSelect,
    el("button", { type: "submit" }, "Plot")),
    message("Drag across the chart to zoom in; double-click it to zoom out."), error, chart);
  if (!numeric.length) { page.append(message("No numeric channels yet.")); return null; }
  await draw();
  const resize = () => plot && plot.setSize({ width: Math.max(280, chart.clientWidth), height: 320 });
  window.addEventListener("resize", resize);
  return () => { window.removeEventListener("resize", resize); if (plot) plot.destroy(); };
}
