"""The status page at ``/``: plain HTML and a little JavaScript, served as is (no build step).
It asks ``/v1/vbatch/status`` every second with the key typed into it (kept in the tab's
sessionStorage only) and draws each batch's progress bar, rate and ETA, and the fleet."""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vbatch: batches</title>
<style>
 body{font:14px system-ui,sans-serif;margin:2em;color:#222}
 table{border-collapse:collapse;width:100%}td,th{padding:.3em .6em;text-align:left}
 tr+tr{border-top:1px solid #ddd}.bar{background:#eee;width:14em;height:.9em}
 .fill{background:#3a7;height:100%}.failed{color:#b33}#error{color:#b33}
</style></head><body>
<h1>vbatch batches</h1>
<p><label>API key <input id="key" type="password" size="40"></label>
 <span id="fleet">fleet: ...</span> <span id="error"></span></p>
<table><thead><tr><th>batch</th><th>status</th><th>progress</th><th>done</th>
<th>requests/s</th><th>ETA</th></tr></thead><tbody id="batches"></tbody></table>
<script>
const keyBox = document.getElementById("key");
keyBox.value = sessionStorage.getItem("vbatch-key") || "";
keyBox.addEventListener("change", () => { sessionStorage.setItem("vbatch-key", keyBox.value);
  refresh(); });
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text;
  if (cls) td.className = cls; return td; }
function eta(s) { if (s === null || s === undefined) return "";
  return s >= 3600 ? (s / 3600).toFixed(1) + " h" : s >= 60 ? (s / 60).toFixed(1) + " min"
       : Math.round(s) + " s"; }
async function refresh() {
  const headers = keyBox.value ? {Authorization: "Bearer " + keyBox.value} : {};
  let data;
  try {
    const reply = await fetch("v1/vbatch/status", {headers});
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    data = await reply.json();
  } catch (e) { document.getElementById("error").textContent = String(e); return; }
  document.getElementById("error").textContent = "";
  const f = data.fleet;
  document.getElementById("fleet").textContent = f
    ? `fleet: ${f.up}/${f.members} servers up, ${f.restarts} restarts` +
      (f.failure ? ` (${f.failure})` : "") + `, ${data.in_flight}/${data.window} in flight`
    : `${data.in_flight}/${data.window} in flight`;
  const body = document.getElementById("batches");
  body.replaceChildren();
  for (const b of data.batches) {
    const c = b.request_counts, done = c.completed + c.failed;
    const row = body.insertRow(); row.id = "batch-" + b.id;
    cell(row, b.id); cell(row, b.status, b.status === "failed" ? "failed" : "");
    const bar = cell(row, ""); bar.innerHTML = '<div class="bar"><div class="fill"></div></div>';
    const pct = c.total ? Math.round(100 * done / c.total) : 0;
    bar.querySelector(".fill").style.width = pct + "%";
    bar.querySelector(".bar").dataset.percent = pct;
    cell(row, `${done}/${c.total}` + (c.failed ? ` (${c.failed} failed)` : ""), "done");
    cell(row, b.requests_per_s === null ? "" : b.requests_per_s.toFixed(1));
    cell(row, eta(b.eta_s));
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
