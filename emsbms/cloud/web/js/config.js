// Configuration: upload a profile (JSON + DBC/EDS text), assign a profile to a device, watch the sync.
import { get, post, put, site } from "./api.js";
import { el, message } from "./dom.js";

const readFile = (file) => file.text();

export async function configPage(page, name) {
  page.append(el("h2", {}, `Configuration · ${name}`));
  let stopped = false;

  // upload
  const profileFile = el("input", { id: "profile-file", type: "file", accept: ".json,application/json" });
  const sourceFiles = el("input", { id: "source-files", type: "file", multiple: true, accept: ".dbc,.eds,.txt" });
  const uploadResult = el("p", { id: "upload-result", role: "status" });
  async function upload(event) {
    event.preventDefault();
    uploadResult.className = "";
    if (!profileFile.files.length) { uploadResult.textContent = "Choose a profile JSON file."; return; }
    let profile;
    try { profile = JSON.parse(await readFile(profileFile.files[0])); } catch (e) {
      uploadResult.className = "error";
      uploadResult.textContent = `${profileFile.files[0].name}: not JSON (${e.message})`;
      return;
    }
    const files = {};
    for (const f of sourceFiles.files) files[f.name] = await readFile(f);
    try {
      const r = await post("/profiles", { profile, files });
      uploadResult.className = "ok";
      uploadResult.textContent = `Stored ${r.name} ${r.version} (hash ${r.hash.slice(0, 12)}…).`;
      await refresh();
    } catch (e) {
      uploadResult.className = "error";
      uploadResult.textContent = `Refused: ${e.message}`;
    }
  }
  page.append(el("section", { class: "card", "aria-labelledby": "upload-h" }, el("h3", { id: "upload-h" }, "Upload a profile"),
    el("form", { class: "controls", onsubmit: upload },
      el("label", { for: "profile-file" }, "Profile JSON"), profileFile,
      el("label", { for: "source-files" }, "DBC or EDS files it names"), sourceFiles,
      el("button", { type: "submit" }, "Upload and validate")), uploadResult));

  // assign
  const device = el("select", { id: "assign-device" });
  const profileName = el("input", { id: "assign-profile", required: true });
  const version = el("input", { id: "assign-version", placeholder: "newest" });
  const syncState = el("p", { id: "sync-state", role: "status" });
  let desired = null;
  async function refresh() {
    const shape = await get(`${site(name)}/devices`);
    desired = shape.desired;
    const names = desired ? desired.devices.map((d) => d.name) : [];
    const keep = device.value;
    device.replaceChildren(...names.map((n) => el("option", { value: n, selected: n === keep }, n)));
    fillFrom();
  }
  function fillFrom() {
    const d = desired && desired.devices.find((x) => x.name === device.value);
    if (d) { profileName.value = d.profile; version.value = d.version || ""; }
  }
  async function watch(v) {
    while (!stopped) {
      const s = await get(`${site(name)}/config`);
      const done = s.desired_version === v && s.applied_version === v && s.status === "applied";
      const failed = s.desired_version === v && s.status === "failed";
      syncState.className = done ? "ok" : failed ? "error" : "";
      syncState.textContent = `Version ${v}: ${done ? "applied" : failed ? "failed" : s.status || "pending"}`
        + (s.reason ? ` — ${s.reason}` : "") + (done && s.sync_ms !== null ? ` (sync ${Math.round(s.sync_ms)} ms)` : "");
      if (done || failed || s.desired_version !== v) return;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  async function assign(event) {
    event.preventDefault();
    if (!desired) { syncState.textContent = "This site has no desired configuration yet: PUT /sites/{site}/config first."; return; }
    const body = { buses: desired.buses, rules: desired.rules || [], devices: desired.devices.map((d) => {
      if (d.name !== device.value) return d;
      const next = { ...d, profile: profileName.value.trim() };
      if (version.value.trim()) next.version = version.value.trim(); else delete next.version;
      return next;
    }) };
    syncState.className = "";
    try {
      const r = await put(`${site(name)}/config`, body);
      syncState.textContent = `Version ${r.version}: sent, waiting for the edge…`;
      await refresh();
      await watch(r.version);
    } catch (e) {
      syncState.className = "error";
      syncState.textContent = `Refused: ${e.message}`;
    }
  }
  device.addEventListener("change", fillFrom);
  page.append(el("section", { class: "card", "aria-labelledby": "assign-h" }, el("h3", { id: "assign-h" }, "Assign a profile"),
    el("form", { class: "controls", onsubmit: assign },
      el("label", { for: "assign-device" }, "Device"), device,
      el("label", { for: "assign-profile" }, "Profile"), profileName,
      el("label", { for: "assign-version" }, "Version (empty: newest)"), version,
      el("button", { type: "submit" }, "Assign and send")), syncState));
  await refresh();
  if (!desired) page.append(message("No desired configuration yet: the first one is PUT through the API."));
  const s = await get(`${site(name)}/config`);
  if (s.desired_version !== null) watch(s.desired_version).catch((e) => { syncState.textContent = e.message; });
  return () => { stopped = true; };
}
