// The live dashboard: the table is one page of the latest report, asked of the server (sorted
// and filtered there: the page never holds the whole book); the charts hold one point per
// report. One server-sent event arrives per report; a reconnecting stream replays what it missed.
"use strict";

const PAGE = 50;
const MAX_CHARTED = 5;
const state = {
  sort: "deviation_bp", order: "desc", filter: "", offset: 0,
  matched: 0, lastTimeNs: 0, intervalSeconds: 10, selected: [],
  reports: [],  // summaries, in the order they were accepted
};
const $ = (id) => document.getElementById(id);

function formatTime(ns) {
  return new Date(Number(BigInt(ns) / 1000000n)).toISOString().replace("T", " ").slice(0, 19);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function loadPage() {
  const query = new URLSearchParams({
    offset: state.offset, limit: PAGE, sort: state.sort, order: state.order, filter: state.filter,
  });
  const answer = await fetch(`/api/latest?${query}`);
  if (answer.status === 404) return;
  const body = await answer.json();
  const report = body.report;
  state.matched = body.matched;
  state.intervalSeconds = body.interval_seconds;
  $("sequence").textContent = `#${report.sequence}`;
  $("time").textContent = formatTime(report.time_ns);
  $("split").textContent = report.split_id || "(none)";
  $("fills").textContent = report.fill_count;
  $("pending").textContent = report.pending_fill_count;
  $("total").textContent = report.total_value;
  $("market").textContent = report.total_market_value;
  state.lastTimeNs = Number(report.time_ns);
  const body_ = $("accounts").tBodies[0];
  body_.replaceChildren();
  for (const account of body.accounts) {
    const row = body_.insertRow();
    row.dataset.account = account.account;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.selected.includes(account.account);
    box.addEventListener("change", () => toggleCharted(account.account, box));
    row.insertCell().append(box);
    cell(row, account.account);
    cell(row, account.target_percent);
    cell(row, account.actual_percent);
    const negative = account.deviation.startsWith("-") ? "negative" : "";
    cell(row, account.deviation, negative);
    cell(row, account.deviation_bp, negative);
    cell(row, account.value);
    cell(row, account.market_value);
    cell(row, Object.entries(account.positions).map(([t, q]) => `${t} ${q}`).join(", "));
  }
  const pages = Math.max(1, Math.ceil(state.matched / PAGE));
  $("page").textContent = `page ${Math.floor(state.offset / PAGE) + 1} of ${pages}`;
  $("matched").textContent = `${state.matched} accounts`;
  $("previous").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= state.matched;
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.className = th.dataset.sort === state.sort ? `sorted ${state.order}` : "";
  }
  updateStatus();
}

function toggleCharted(account, box) {
  if (box.checked) {
    if (state.selected.length >= MAX_CHARTED) { box.checked = false; return; }
    state.selected.push(account);
  } else {
    state.selected = state.selected.filter((a) => a !== account);
  }
  drawCharts();
}

function drawCharts() {
  const times = state.reports.map((r) => formatTime(r.time_ns));
  const traces = [{
    x: times, y: state.reports.map((r) => r.worst_bp), name: "worst |deviation|", mode: "lines+markers",
  }];
  for (const account of state.selected) {
    traces.push({
      x: times, y: state.reports.map((r) => r.deviations_bp[account] ?? null), name: account,
      mode: "lines",
    });
  }
  Plotly.react("drift", traces, {
    title: { text: "drift (basis points of total value)" }, margin: { t: 40, r: 10 },
    legend: { orientation: "h" },
  }, { displaylogo: false, responsive: true });
  const fills = state.reports.map((r, i) => (i === 0 ? 0 : Math.max(0, r.fill_count - state.reports[i - 1].fill_count)));
  Plotly.react("rate", [{ x: times, y: fills, type: "bar", name: "fills" }], {
    title: { text: "fills per report interval" }, margin: { t: 40, r: 10 },
  }, { displaylogo: false, responsive: true });
}

function addReport(summary) {
  if (state.reports.some((r) => r.index === summary.index)) return false;
  state.reports.push(summary);
  state.reports.sort((a, b) => a.index - b.index);
  return true;
}

function updateStatus() {
  const status = $("status");
  if (!state.lastTimeNs) return;
  const age = Date.now() - state.lastTimeNs / 1e6;
  const stale = age > 2 * state.intervalSeconds * 1000;
  status.className = `status ${stale ? "stale" : "live"}`;
  status.textContent = stale
    ? `stale: no report for ${Math.round(age / 1000)} s`
    : `live: a report every ${state.intervalSeconds.toFixed(1)} s`;
}

async function catchUp() {
  const answer = await fetch("/api/history");
  const body = await answer.json();
  body.reports.forEach(addReport);
  drawCharts();
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("report", async (event) => {
    if (addReport(JSON.parse(event.data))) {
      drawCharts();
      await loadPage();
    }
  });
}

document.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
  state.order = state.sort === th.dataset.sort && state.order === "desc" ? "asc" : "desc";
  state.sort = th.dataset.sort;
  state.offset = 0;
  loadPage();
}));
let typing = null;
$("filter").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => { state.filter = $("filter").value.trim(); state.offset = 0; loadPage(); }, 200);
});
$("previous").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadPage(); });
$("next").addEventListener("click", () => { state.offset += PAGE; loadPage(); });
setInterval(updateStatus, 1000);

catchUp().then(loadPage).then(listen);
