"""The status page at ``/``: plain HTML and a little JavaScript, served as is (no build step).
It asks ``/v1/vbatch/status`` every second with the key typed into it (kept in the tab's
sessionStorage only) and draws, for an operator at a glance: the fleet's servers (state,
restarts), a chart of output tokens/s over the last minutes (fleet-wide, and each running
batch's), and each batch of the key: its metadata name, status, progress bar, completed and
failed counts, created and elapsed time, share of the window, rate, ETA and its output and
error files (fetched with the key, saved by the browser)."""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbatch: batches</title>
<style>
 body{font:14px system-ui,sans-serif;margin:2em;color:#222}
 table{border-collapse:collapse;width:100%}td,th{padding:.3em .6em;text-align:left}
 tr+tr{border-top:1px solid #ddd}.bar{background:#eee;width:12em;height:.9em}
 .fill{background:#3a7;height:100%}.failed,.down{color:#b33}#error{color:#b33}
 .up{color:#3a7}svg{background:#fafafa;border:1px solid #ddd}
 .chart polyline{fill:none;stroke-width:1.5}.small{color:#777;font-size:12px}
</style></head><body>
<h1>vbatch batches</h1>
<p><label>API key <input id="key" type="password" size="40"></label>
 <span id="window"></span> <span id="error"></span></p>
<h2>Servers</h2>
<table><thead><tr><th>server</th><th>state</th><th>restarts</th></tr></thead>
<tbody id="servers"></tbody></table><p id="fleet" class="small"></p>
<h2>Output tokens/s, last minutes</h2>
<svg id="chart" class="chart" width="640" height="140" viewBox="0 0 640 140"></svg>
<p id="chart-legend" class="small"></p>
<h2>Batches</h2>
<table><thead><tr><th>batch</th><th>name</th><th>status</th><th>progress</th>
<th>completed</th><th>failed</th><th>created</th><th>elapsed</th><th>share</th>
<th>requests/s</th><th>ETA</th><th>files</th></tr></thead><tbody id="batches"></tbody></table>
<script>
const COLORS = ["#36c", "#c63", "#3a7", "#939", "#c93", "#399"];
const keyBox = document.getElementById("key");
keyBox.value = sessionStorage.getItem("vbatch-key") || "";
keyBox.addEventListener("change", () => { sessionStorage.setItem("vbatch-key", keyBox.value);
  refresh(); });
function headers() { return keyBox.value ? {Authorization: "Bearer " + keyBox.value} : {}; }
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text;
  if (cls) td.className = cls; return td; }
function span(s) { if (s === null || s === undefined) return "";
  return s >= 3600 ? (s / 3600).toFixed(1) + " h" : s >= 60 ? (s / 60).toFixed(1) + " min"
       : Math.round(s) + " s"; }
async function download(fileId, name) {
  const reply = await fetch("v1/files/" + fileId + "/content", {headers: headers()});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await reply.blob()); a.download = name; a.click();
}
function fileLink(td, fileId, label) {
  if (!fileId) return;
  const a = document.createElement("a"); a.href = "#"; a.textContent = label;
  a.className = "file"; a.dataset.file = fileId;
  a.addEventListener("click", e => { e.preventDefault(); download(fileId, fileId + ".jsonl"); });
  td.append(a, " ");
}
function chart(series, now) {
  // series: [[label, [[t, tok/s], ...]], ...]; the x axis is the last 6 minutes.
  const svg = document.getElementById("chart"), W = 640, H = 140, span_s = 360;
  svg.replaceChildren();
  const top = Math.max(1, ...series.flatMap(([, pts]) => pts.map(p => p[1])));
  const legend = [];
  series.forEach(([label, pts], i) => {
    if (!pts.length) return;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts.map(([t, r]) =>
      `${(W * (1 - (now - t) / span_s)).toFixed(1)},${(H - 4 - (H - 8) * r / top).toFixed(1)}`
    ).join(" "));
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.dataset.series = label; line.dataset.last = pts[pts.length - 1][1];
    svg.append(line);
    for (const point of line.getAttribute("points").split(" ")) {  // a sample is a dot too
      const [x, y] = point.split(","), dot = document.createElementNS(
        "http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", 2);
      dot.setAttribute("fill", COLORS[i % COLORS.length]); svg.append(dot);
    }
    legend.push(`${label} ${Math.round(pts[pts.length - 1][1])}`);
  });
  document.getElementById("chart-legend").textContent =
    legend.length ? legend.join(" · ") + ` tok/s (top of chart ${Math.round(top)})`
                  : "no output yet";
}
async function refresh() {
  let data;
  try {
    const reply = await fetch("v1/vbatch/status", {headers: headers()});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    data = await reply.json();
  } catch (e) { document.getElementById("error").textContent = String(e); return; }
  document.getElementById("error").textContent = "";
  document.getElementById("window").textContent = `${data.in_flight}/${data.window} in flight`;
  const f = data.fleet, servers = document.getElementById("servers");
  servers.replaceChildren();
  for (const s of (f && f.servers) || []) {
    const row = servers.insertRow(); row.className = "server";
    cell(row, s.url); cell(row, s.up ? "up" : "down", s.up ? "up" : "down");
    cell(row, String(s.restarts));
  }
  document.getElementById("fleet").textContent = f
    ? `${f.up}/${f.members} servers up, ${f.restarts} restarts` +
      (f.failure ? ` (${f.failure})` : "") : "";
  const body = document.getElementById("batches"), series = [["fleet", data.tokens_per_s]];
  body.replaceChildren();
  for (const b of data.batches) {
    const c = b.request_counts, done = c.completed + c.failed;
    const name = (b.metadata && (b.metadata.name || b.metadata.description)) || "";
    const row = body.insertRow(); row.id = "batch-" + b.id;
    cell(row, b.id); cell(row, name, "name");
    cell(row, b.status, b.status === "failed" ? "failed status" : "status");
    const bar = cell(row, ""); bar.innerHTML = '<div class="bar"><div class="fill"></div></div>';
    const pct = c.total ? Math.round(100 * done / c.total) : 0;
    bar.querySelector(".fill").style.width = pct + "%";
    bar.querySelector(".bar").dataset.percent = pct;
    cell(row, `${c.completed}/${c.total}`, "completed");
    cell(row, String(c.failed), c.failed ? "failed count" : "count");
    cell(row, new Date(b.created_at * 1000).toLocaleTimeString(), "created");
    const from = b.in_progress_at || b.created_at;
    cell(row, span((b.ended_at || data.now) - from), "elapsed");
    cell(row, b.share === null ? "" : Math.round(100 * b.share) + "%", "share");
    cell(row, b.requests_per_s === null ? "" : b.requests_per_s.toFixed(1));
    cell(row, span(b.eta_s));
    const files = cell(row, "", "files");
    fileLink(files, b.output_file_id, "output"); fileLink(files, b.error_file_id, "errors");
    if (b.tokens_per_s.length) series.push([name || b.id, b.tokens_per_s]);
  }
  chart(series, data.now);
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
