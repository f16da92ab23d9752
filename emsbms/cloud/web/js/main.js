// The router: sign-in, then #/fleet and #/<page>/<site>. Hashes hold page and site names only, never the token.
import { dropSession, get, saveSession, session } from "./api.js";
import { clear, el } from "./dom.js";
import { fleet } from "./fleet.js";
import { sitePage } from "./site.js";
import { plotPage } from "./plot.js";
import { commandsPage } from "./commands.js";
import { alarmsPage } from "./alarms.js";
import { configPage } from "./config.js";

const PAGES = { site: ["Site", sitePage], plot: ["Plot", plotPage], commands: ["Commands", commandsPage],
                alarms: ["Alarms", alarmsPage], config: ["Configuration", configPage] };
let cleanup = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return { page: PAGES[parts[0]] ? parts[0] : "fleet", site: parts[1] || null };
}

function nav(current) {
  const box = clear(document.getElementById("nav"));
  const link = (href, text, active) => el("a", { href, "aria-current": active ? "page" : null }, text);
  box.append(link("#/fleet", "Fleet", current.page === "fleet"));
  if (current.site) {
    for (const [key, [label]] of Object.entries(PAGES)) {
      box.append(link(`#/${key}/${encodeURIComponent(current.site)}`, label, current.page === key));
    }
  }
}

async function show() {
  if (cleanup) { cleanup(); cleanup = null; }
  const s = session();
  const signIn = document.getElementById("sign-in");
  const page = clear(document.getElementById("page"));
  document.getElementById("nav").hidden = !s;
  document.getElementById("who").hidden = !s;
  signIn.hidden = !!s;
  if (!s) { document.getElementById("org").focus(); return; }
  document.getElementById("org-name").textContent = `Organisation ${s.org}`;
  const current = route();
  nav(current);
  const render = current.page === "fleet" ? fleet : PAGES[current.page][1];
  try {
    cleanup = (await render(page, current.site)) || null;
  } catch (e) {
    page.append(el("p", { class: "error", role: "alert" }, e.message));
  }
}

async function signIn(event) {
  event.preventDefault();
  const org = document.getElementById("org").value.trim();
  const token = document.getElementById("token").value.trim();
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  saveSession(org, token);
  try {
    await get("/sites");
  } catch (e) {
    dropSession();
    error.textContent = `Sign-in refused: ${e.message}`;
    return;
  }
  document.getElementById("token").value = "";
  if (location.hash !== "#/fleet") location.hash = "#/fleet"; else show();
}

document.getElementById("sign-in-form").addEventListener("submit", signIn);
document.getElementById("sign-out").addEventListener("click", () => { dropSession(); location.hash = ""; show(); });
window.addEventListener("hashchange", show);
show();
