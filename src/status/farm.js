// The farm's page (chapter 13): the four tiers of seed 000 from GET /farm.json, polled every
// second. Rates and costs are differences between two views; every value goes into the page as
// text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
// Costs are taken over this many seconds: a CPU counter moves in ticks of 10 ms, too coarse
// for one second of a quiet farm.
const WINDOW_S = 5;
const views = [];
let traced = new Set();

// `$` and `el` are in common.js.

function members(view) {
  return view.tiers.flatMap((t) => t.members.map((m) => ({ ...m, tier: t.tier })));
}

// `field`'s growth for each process present in both views, summed over those `keep` accepts.
function grown(before, after, field, keep) {
  const old = new Map(members(before).map((m) => [m.pid, m]));
  let total = 0;
  for (const m of members(after)) {
    const b = old.get(m.pid);
    if (b && keep(m) && typeof m[field] === "number" && typeof b[field] === "number") {
      total += Math.max(0, m[field] - b[field]);
    }
  }
  return total;
}

function cost(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  const us = seconds * 1e6;
  return us >= 1000 ? `${(us / 1000).toFixed(2)} ms` : `${Math.round(us)} µs`;
}

function card(m, unit, perSecond, cpu) {
  const div = el("div", undefined, `member ${m.state}`);
  if (traced.has(m.name)) div.classList.add("traced");
  div.dataset.name = m.name;
  div.appendChild(el("h4", m.name));
  div.appendChild(el("p", m.detail, "state"));
  const table = el("table");
  const add = (k, v) => {
    const tr = el("tr");
    tr.appendChild(el("td", k));
    tr.appendChild(el("td", v));
    table.appendChild(tr);
  };
  add("address", m.address);
  add("pid", m.pid);
  add("CPU", cpu);
  add(`${unit} open`, m.active);
  add(`${unit} in all`, m.total);
  add(`${unit} per second`, perSecond);
  if (m.full !== undefined) add("TLS handshakes full / resumed", `${m.full} / ${m.resumed}`);
  if (m.requests !== undefined) add("requests taken in", m.requests);
  div.appendChild(table);
  return div;
}

function render(view) {
  const previous = views.length ? views[views.length - 1] : null;
  views.push(view);
  while (views.length > 1 && view.at - views[1].at >= WINDOW_S) views.shift();
  const old = previous ? new Map(members(previous).map((m) => [m.pid, m])) : new Map();
  const elapsed = previous ? view.at - previous.at : 0;

  const columns = view.tiers.map((t) => {
    const column = el("div", undefined, "tier");
    column.dataset.tier = t.tier;
    column.appendChild(el("h3", t.title));
    for (const m of t.members) {
      const b = old.get(m.pid);
      const rate = b && elapsed > 0 ? Math.max(0, (m.total - b.total) / elapsed).toFixed(1) : "–";
      const cpu = b && elapsed > 0 && m.cpu !== null && b.cpu !== null
        ? `${Math.round((100 * Math.max(0, m.cpu - b.cpu)) / elapsed)} %`
        : "–";
      column.appendChild(card(m, t.unit, rate, cpu));
    }
    return column;
  });
  $("tiers").replaceChildren(...columns);

  // The economics of seed 000, over the window.
  const first = views[0];
  const span = view.at - first.at;
  const all = () => true;
  const handshakes = grown(first, view, "full", all) + grown(first, view, "resumed", all);
  const full = grown(first, view, "full", all);
  const requests = grown(first, view, "requests", all);
  const rows = view.tiers.map((t) => {
    const cpu = grown(first, view, "cpu", (m) => m.tier === t.tier);
    const tr = el("tr");
    tr.dataset.tier = t.tier;
    for (const cell of [
      t.title,
      t.members.length,
      span > 0 ? `${Math.round((100 * cpu) / span)} %` : "–",
      handshakes ? cost(cpu / handshakes) : "no new connections",
      requests ? cost(cpu / requests) : "no requests",
    ]) tr.appendChild(el("td", cell));
    return tr;
  });
  $("economics").tBodies[0].replaceChildren(...rows);
  $("rates").textContent = span > 0
    ? `Over the last ${span.toFixed(0)} s: ${(handshakes / span).toFixed(1)} new TLS connections per second (${full} full, ${handshakes - full} resumed), ${(requests / span).toFixed(1)} requests per second.`
    : "Rates appear from the second view on.";
}

async function poll() {
  const started = performance.now();
  try {
    const response = await fetch("/farm.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`/farm.json answered ${response.status}`);
    const view = await response.json();
    render(view);
    $("main").hidden = false;
    $("state").textContent = `front door ${view.entry}; live, every second; last update ${new Date().toLocaleTimeString()}`;
    $("state").className = "";
  } catch (e) {
    $("state").textContent = `cannot reach ssl-farm: ${e.message}`;
    $("state").className = "failed";
  }
  setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
}

const WHAT = {
  l4: () => "passed the TLS connection through, untouched",
  offload: (t) => `decrypted it (${t.handshake} handshake)`,
  l7: () => "chose the application by cookie",
  app: (t) => `answered ${t.status}`,
};

$("trace").addEventListener("click", async () => {
  $("trace").disabled = true;
  $("traced").textContent = "sending…";
  try {
    // The field proves the page sent it: another site's page cannot, without a CORS
    // preflight this server never grants.
    const response = await fetch("/trace", { method: "POST", headers: { "x-farm-trace": "1" }, cache: "no-store" });
    if (!response.ok) throw new Error((await response.text()).trim() || `answered ${response.status}`);
    const t = await response.json();
    traced = new Set(t.hops.flatMap((h) => h.names));
    for (const c of document.querySelectorAll(".member")) {
      c.classList.toggle("traced", traced.has(c.dataset.name));
    }
    $("path").replaceChildren(...t.hops.map((hop) => {
      const who = hop.names.length === 1
        ? hop.names[0]
        : hop.names.length === 0 ? "(not seen)" : `one of ${hop.names.join(", ")}`;
      const li = el("li", `${who}: ${WHAT[hop.tier](t)}`);
      li.dataset.tier = hop.tier;
      return li;
    }));
    $("traced").textContent = `${t.millis.toFixed(1)} ms from connecting to the last byte` +
      (t.certain ? "." : `; other traffic moved the same counters in all ${t.tries} tries, so a hop may name more than one member.`);
  } catch (e) {
    $("traced").textContent = `the trace failed: ${e.message}`;
  }
  $("trace").disabled = false;
});

poll();
