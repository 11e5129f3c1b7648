// The status page (chapter 10): a person's view of what /metrics says, polled every second.
// Every value goes into the page as text (textContent), never as markup: backend names and
// addresses come from configs, registrations and etcd, which a page must not trust.
"use strict";

const POLL_MS = 1000;
const HISTORY = 60;
let token = null;
let previous = null;
let previousRoutes = new Map();
const history = new Map();

// `$` and `el` are in common.js.

// Prometheus' text format: `name{label="value",...} number`, comments skipped.
function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

function sum(samples, name, filter) {
  return samples
    .filter((s) => s.name === name && (!filter || filter(s.labels)))
    .reduce((a, s) => a + s.value, 0);
}

function perBackend(samples, name) {
  const out = new Map();
  for (const s of samples) {
    if (s.name === name && s.labels.backend !== undefined) {
      out.set(s.labels.backend, (out.get(s.labels.backend) || 0) + s.value);
    }
  }
  return out;
}

// A quantile of a Prometheus histogram (cumulative `le` buckets) for one backend.
function quantile(samples, name, backend, q) {
  const buckets = samples
    .filter((s) => s.name === name && s.labels.backend === backend && s.labels.le !== undefined)
    .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), n: s.value }))
    .sort((a, b) => a.le - b.le);
  const total = buckets.length ? buckets[buckets.length - 1].n : 0;
  if (!total) return null;
  const want = q * total;
  for (const b of buckets) if (b.n >= want) return b.le;
  return null;
}

function seconds(v) {
  if (v === null || v === undefined) return "–";
  if (v === Infinity) return "> last bucket";
  return v < 1 ? `${Math.round(v * 1000)} ms` : `${v} s`;
}

function spark(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY} 24`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${i + HISTORY - values.length},${23 - (v / max) * 22}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  return svg;
}

function row(cells, cls) {
  const tr = el("tr", undefined, cls);
  for (const c of cells) {
    if (c instanceof Node) {
      const td = el("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else {
      tr.appendChild(el("td", c));
    }
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function render(samples, elapsed) {
  const http = samples.some((s) => s.name.startsWith("httplb_"));
  const p = http ? "httplb" : "tcplb";
  $("title").textContent = http ? "http-lb status" : "tcp-lb status";
  const refused = samples
    .filter((s) => s.name === `${p}_connections_refused_total` && s.value > 0)
    .map((s) => `${s.labels.reason} ${s.value}`)
    .join(", ");
  const handshakes = samples
    .filter((s) => s.name === `${p}_client_tls_handshakes_total`)
    .map((s) => `${s.labels.kind} ${s.value}`)
    .join(", ");
  // Where the backends come from besides the config: registrations (chapter 14), etcd (15).
  const registrations = (r) => sum(samples, `${p}_registrations_total`, (l) => l.result === r);
  const etcd = samples.some((s) => s.name === `${p}_etcd_stale`)
    ? `${sum(samples, `${p}_etcd_backends`)} backends, ${sum(samples, `${p}_etcd_stale`) ? "STALE: serving the last known list" : "current"}; ${sum(samples, `${p}_etcd_skipped_total`)} keys skipped`
    : "off";
  fill($("listener").tBodies[0], [
    row(["connections open", sum(samples, `${p}_connections_active`)]),
    row(["connections accepted", sum(samples, `${p}_connections_total`)]),
    row(["waiting for a slot", sum(samples, `${p}_connections_queued`)]),
    row(["refused", refused || "none"]),
    row(["reloads (ok / refused)", `${sum(samples, `${p}_config_reloads_total`, (l) => l.result === "ok")} / ${sum(samples, `${p}_config_reloads_total`, (l) => l.result !== "ok")}`]),
    row(["TLS handshakes", handshakes || "no TLS listener"]),
    row(["registered servers (created / renewed / expired / deleted)", `${sum(samples, `${p}_registered_backends`)} (${registrations("created")} / ${registrations("renewed")} / ${registrations("expired")} / ${registrations("deleted")})`]),
    row(["etcd discovery", etcd], etcd.includes("STALE") ? "down" : ""),
  ]);

  const up = perBackend(samples, `${p}_backend_up`);
  const active = perBackend(samples, `${p}_backend_connections_active`);
  // Requests answered for http-lb (every class), connections for tcp-lb.
  const totalName = http ? "httplb_backend_responses_total" : `${p}_backend_connections_total`;
  const totals = perBackend(samples, totalName);
  const failures = perBackend(samples, `${p}_backend_connect_failures_total`);
  const changed = perBackend(samples, `${p}_backend_state_changed_seconds`);
  const causes = new Map();
  for (const s of samples) {
    if (s.name === `${p}_backend_state_cause` && s.value === 1) {
      causes.set(s.labels.backend, s.labels.cause.replace(/-/g, " "));
    }
  }
  const errors5xx = new Map();
  for (const s of samples) {
    if (s.name === "httplb_backend_responses_total" && s.labels.class === "5xx") {
      errors5xx.set(s.labels.backend, s.value);
    }
  }
  const rows = [];
  for (const [backend, isUp] of up) {
    const total = totals.get(backend) || 0;
    const before = previous ? previous.get(backend) : undefined;
    const rate = before === undefined || !elapsed ? 0 : Math.max(0, (total - before) / elapsed);
    const h = history.get(backend) || [];
    h.push(rate);
    if (h.length > HISTORY) h.shift();
    history.set(backend, h);
    const latency = http
      ? `${seconds(quantile(samples, "httplb_backend_response_seconds_bucket", backend, 0.5))} / ${seconds(quantile(samples, "httplb_backend_response_seconds_bucket", backend, 0.99))}`
      : "–";
    const state = isUp ? "up" : "down";
    // Since when and why, from the health module's last change of this backend.
    const since = changed.get(backend)
      ? ` since ${new Date(changed.get(backend) * 1000).toLocaleTimeString()}: ${causes.get(backend) || ""}`
      : "";
    const errors = http
      ? `${failures.get(backend) || 0} connect, ${errors5xx.get(backend) || 0} 5xx`
      : `${failures.get(backend) || 0} connect`;
    const tr = row([backend, state + since, active.get(backend) || 0, total, rate.toFixed(1), spark(h), errors, latency], state);
    tr.children[1].className = "state";
    rows.push(tr);
  }
  fill($("backends").tBodies[0], rows);
  previous = totals;

  $("http").hidden = !http;
  if (http) {
    const cache = (r) => sum(samples, "httplb_cache_total", (l) => l.result === r);
    const looked = ["HIT", "MISS", "EXPIRED", "STALE", "UPDATING"].reduce((a, r) => a + cache(r), 0);
    const ratio = looked ? `${Math.round((100 * cache("HIT")) / looked)} %` : "no cache, or nothing asked yet";
    const affinity = (o) => sum(samples, "httplb_affinity_total", (l) => l.outcome === o);
    const bytes = sum(samples, "httplb_cache_bytes");
    const bound = sum(samples, "httplb_cache_max_bytes");
    const taken = sum(samples, "httplb_compression_bytes_total", (l) => l.direction === "in");
    const sent = sum(samples, "httplb_compression_bytes_total", (l) => l.direction === "out");
    const compression = taken
      ? `${taken} bytes in, ${sent} out: ${Math.round(100 - (100 * sent) / taken)} % saved`
      : "nothing compressed (off, or nothing asked for it yet)";
    fill($("httpstats").tBodies[0], [
      row(["requests (HTTP/1 / HTTP/2)", `${sum(samples, "httplb_requests_total", (l) => l.protocol === "http1")} / ${sum(samples, "httplb_requests_total", (l) => l.protocol === "h2")}`]),
      row(["affinity (hit / miss / redispatch)", `${affinity("hit")} / ${affinity("miss")} / ${affinity("redispatch")}`]),
      row(["cache hit ratio", ratio]),
      row(["cache bytes held / bound", bound ? `${bytes} / ${bound}` : "no cache"]),
      row(["compression", compression]),
    ]);
    const routes = samples.filter((s) => s.name === "httplb_route_requests_total");
    $("routing").hidden = routes.length === 0;
    const now = new Map();
    fill($("routes").tBodies[0], routes.map((s) => {
      const key = `${s.labels.route} ${s.labels.kind}`;
      now.set(key, s.value);
      const before = previousRoutes.get(key);
      const rate = before === undefined || !elapsed ? 0 : Math.max(0, (s.value - before) / elapsed);
      return row([s.labels.route, s.labels.kind, s.value, rate.toFixed(1)]);
    }));
    previousRoutes = now;
  }
}

// Servers that registered themselves (chapter 14), from `GET /backends` (404 while
// registration is off): each with the time left on its lease.
function renderRegistered(list) {
  const registered = list.filter((b) => b.source === "registered");
  $("registrations").hidden = registered.length === 0;
  fill($("registered").tBodies[0], registered.map((b) => {
    const left = b.expires_in === undefined ? "–" : `${b.expires_in.toFixed(1)} s`;
    return row([b.name, b.address, b.url, b.up ? "up" : "down", left], b.up ? "up" : "down");
  }));
}

async function registrations(headers) {
  const response = await fetch("/backends", { headers, cache: "no-store" });
  if (response.ok) {
    renderRegistered(await response.json());
  } else {
    $("registrations").hidden = true;
  }
}

async function poll() {
  const started = performance.now();
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch("/metrics", { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      $("login").hidden = false;
      $("main").hidden = true;
      $("state").textContent = token ? "that token was refused" : "a token is needed";
      $("state").className = "failed";
    } else if (!response.ok) {
      throw new Error(`/metrics answered ${response.status}`);
    } else {
      const text = await response.text();
      const now = performance.now();
      const elapsed = poll.last ? (now - poll.last) / 1000 : 0;
      poll.last = now;
      render(parse(text), elapsed);
      await registrations(headers);
      $("login").hidden = true;
      $("main").hidden = false;
      $("state").textContent = `live, every second; last update ${new Date().toLocaleTimeString()}`;
      $("state").className = "";
    }
  } catch (e) {
    $("state").textContent = `cannot reach the balancer: ${e.message}`;
    $("state").className = "failed";
  }
  setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  $("token").value = "";
});

poll();
