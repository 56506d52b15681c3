// The service's pages: live updates, the new-job form, the job page's charts and the cleaner.
// No library and no network beyond this service: every request goes to the same JSON API the CLI uses,
// with the login cookie, and every change carries the header that proves it came from these pages.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const show = (element, on) => { if (element) element.hidden = !on; };
const text = (element, value) => { if (element) element.textContent = value; };

async function api(method, url, body, raw) {
  const headers = {"X-Trainer-Page": "1"};
  if (body !== undefined && !raw) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {method, headers, credentials: "same-origin",
                                     body: body === undefined ? undefined : raw ? body : JSON.stringify(body)});
  let answer = null;
  try { answer = await response.json(); } catch (e) { answer = null; }
  if (!response.ok) throw new Error((answer && answer.error) || `${response.status} ${response.statusText}`);
  return answer;
}

function fail(element, error) {
  text(element, error ? String(error.message || error) : "");
  show(element, !!error);
}

// --- jobs list: its rows re-read every 2 s while the page is visible ------------------------------------------

function jobsPage() {
  const rows = $("#job-rows");
  const refresh = async () => {
    if (document.hidden) return;
    const query = new URLSearchParams(location.search);
    query.set("fragment", "rows");
    try {
      const response = await fetch(`/ui/jobs?${query}`, {credentials: "same-origin"});
      if (response.ok && response.headers.get("X-Total") !== null) {
        rows.innerHTML = await response.text();
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      }
    } catch (e) { /* the service restarting: the next tick tries again */ }
  };
  setInterval(refresh, 2000);
}

// --- new job: the form built from the option definitions, the command it equals, checked as you type --------

function newJobPage() {
  const form = $("#new-job");
  const defs = JSON.parse($("#option-defs").textContent);
  const error = $("#form-error");
  const submit = $("#submit");
  let checking = 0;

  const value = (name) => form.elements[name];
  function body() {
    const options = {};
    for (const [name, def] of Object.entries(defs)) {
      const input = value(name);
      if (!input || input.closest("[hidden]")) continue;
      if (def.switch) { if (input.checked) options[name] = true; continue; }
      const raw = input.value.trim();
      if (raw === "") continue;
      if (def.kind === "bool") options[name] = raw === "true";
      else if ((def.kind === "int" || def.kind === "float") && raw !== "" && !isNaN(Number(raw))) options[name] = Number(raw);
      else options[name] = raw;
    }
    const job = {recipe: value("recipe").value, command: value("command").value, options};
    const source = value("source").value;
    if (source.startsWith("data:")) job.data = source.slice(5);
    if (source.startsWith("dataset:")) {
      const [id, version] = source.slice(8).split(":");
      job.dataset = id;
      if (version) job.dataset_version = Number(version);
    }
    const nproc = value("nproc").value.trim();
    if (nproc !== "") job.nproc = isNaN(Number(nproc)) ? nproc : Number(nproc);
    return job;
  }
  function flagWords(name, v) {
    const def = defs[name];
    if (def.kind === "bool") return v ? [def.flag] : ["--no-" + def.flag.slice(2)];
    return [def.flag, String(v)];
  }
  function commandLine(job) {
    const words = ["trainer", job.command, job.recipe];
    for (const name of Object.keys(defs)) if (name in job.options) words.push(...flagWords(name, job.options[name]));
    const chosen = value("source").selectedOptions[0];
    if (chosen && chosen.dataset.path) words.push("--data", chosen.dataset.path);
    if (job.nproc && job.nproc > 1) words.push("--nproc", String(job.nproc));
    return words.map(w => /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`).join(" ");
  }
  async function update() {
    const fitOnly = value("command").value !== "fit";
    form.querySelectorAll("[data-fit-only]").forEach(el => show(el, !fitOnly));
    const job = body();
    text($("#command-line"), commandLine(job));
    const mine = ++checking;
    try {
      await api("POST", "/jobs/check", job);
      if (mine === checking) { fail(error, null); submit.disabled = false; }
    } catch (e) {
      if (mine === checking) { fail(error, e); submit.disabled = true; }
    }
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const job = await api("POST", "/jobs", body());
      location.href = `/ui/jobs/${job.id}`;
    } catch (e) { fail(error, e); submit.disabled = false; }
  });

  // upload: the archive is the request's body; XMLHttpRequest reports the bytes sent (fetch cannot)
  $("#upload-button").addEventListener("click", () => {
    const file = $("#upload-file").files[0];
    const status = $("#upload-status"), bar = $("#upload-progress");
    if (!file) { text(status, "Choose an archive first."); return; }
    const request = new XMLHttpRequest();
    const layout = value("recipe").value === "folder" || !["mnist", "mnist_sample", "cifar10", "pets", "pets_breeds"]
      .includes(value("recipe").value) ? "folder" : value("recipe").value;
    request.open("POST", `/datasets?filename=${encodeURIComponent(file.name)}&recipe=${encodeURIComponent(layout)}`);
    request.setRequestHeader("X-Trainer-Page", "1");
    show(bar, true);
    request.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      bar.firstElementChild.style.width = `${(100 * e.loaded / e.total).toFixed(1)}%`;
      text(status, `Uploading ${file.name}: ${(e.loaded / 2 ** 20).toFixed(1)} of ${(e.total / 2 ** 20).toFixed(1)} MiB`);
    };
    request.onload = () => {
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (e) { /* not JSON: the status says it */ }
      if (request.status >= 400) { text(status, answer.error || `upload failed (${request.status})`); return; }
      bar.firstElementChild.style.width = "100%";
      const label = `${answer.name} (${answer.images} images, ${Object.keys(answer.classes).length} classes)`;
      // a new upload is its version 1; an archive uploaded before keeps its versions: train on its newest
      let option = form.querySelector(`option[value^="dataset:${answer.id}:"]`);
      if (!option) {
        option = new Option(label, `dataset:${answer.id}:1`);
        $("#uploaded").appendChild(option);
      }
      option.dataset.path = answer.name;
      value("source").value = option.value;
      text(status, `${answer.new ? "Uploaded" : "Already here"}: ${label}.`);
      document.body.dataset.uploaded = answer.id;
      update();
    };
    request.onerror = () => text(status, "The upload stopped: the service could not be reached.");
    request.send(file);
  });
  update();
}

// --- charts: loss and metric curves, drawn from the event stream as the points arrive ------------------------

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];

function drawChart(svg, series, xMax) {
  const W = 640, H = 280, left = 52, right = 12, top = 12, bottom = 30;
  const points = series.flatMap(s => s.points);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const add = (tag, attrs, content) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (content !== undefined) el.textContent = content;
    svg.appendChild(el);
    return el;
  };
  if (!points.length) { add("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis"}, "waiting for the first points"); return; }
  let yMin = Math.min(...points.map(p => p[1])), yMax = Math.max(...points.map(p => p[1]));
  if (yMax - yMin < 1e-9) { yMax += 0.5; yMin -= 0.5; }
  const pad = (yMax - yMin) * 0.08; yMin -= pad; yMax += pad;
  const xTop = Math.max(xMax || 1, ...points.map(p => p[0]));
  const X = x => left + (W - left - right) * x / xTop, Y = y => top + (H - top - bottom) * (1 - (y - yMin) / (yMax - yMin));
  for (let i = 0; i <= 4; i++) {
    const y = yMin + (yMax - yMin) * i / 4;
    add("line", {x1: left, x2: W - right, y1: Y(y), y2: Y(y), class: "grid"});
    add("text", {x: left - 6, y: Y(y) + 4, "text-anchor": "end", class: "axis"}, y.toPrecision(3));
  }
  const ticks = Math.min(Math.ceil(xTop), 10);
  for (let i = 0; i <= ticks; i++) {
    const x = xTop * i / ticks;
    add("text", {x: X(x), y: H - 10, "text-anchor": "middle", class: "axis"}, Number.isInteger(x) ? x : x.toFixed(1));
  }
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    if (s.points.length > 1) add("polyline", {points: s.points.map(p => `${X(p[0])},${Y(p[1])}`).join(" "),
                                              fill: "none", stroke: color, "stroke-width": s.thin ? 1 : 2, opacity: s.thin ? 0.6 : 1});
    if (!s.thin) s.points.forEach(p => add("circle", {cx: X(p[0]), cy: Y(p[1]), r: 3.5, fill: color, class: `point ${s.name}`}));
    add("text", {x: left + 8 + 130 * i, y: top + 12, fill: color, class: "legend"}, s.label);
  });
}

// --- one job, live -----------------------------------------------------------------------------------------

function jobPage() {
  const job = JSON.parse($("#job-data").textContent);
  const id = job.id;
  const state = {epochsTotal: job.options.epochs || null, header: null, rows: [], batchLoss: [], ended: false};
  const epochText = $("#epoch-text"), batchText = $("#batch-text");
  const setBar = (bar, fraction) => { bar.firstElementChild.style.width = `${(100 * Math.min(1, fraction)).toFixed(1)}%`; };
  let redraw = null;

  function draw() {
    redraw = null;
    const header = state.header || [];
    const metricNames = header.filter(h => !["epoch", "phase", "seconds", "train_loss", "valid_loss"].includes(h));
    const series = (name, label) => ({name, label, points: state.rows.filter(r => r[name] !== null && r[name] !== undefined && isFinite(r[name])).map(r => [r.epoch, r[name]])});
    drawChart($("#loss-chart"), [{name: "batch", label: "train (each batch)", thin: true, color: "#93c5fd", points: state.batchLoss},
                                 series("train_loss", "train_loss"), series("valid_loss", "valid_loss")], state.epochsTotal);
    drawChart($("#metric-chart"), metricNames.map(m => series(m, m)), state.epochsTotal);
    if (metricNames.length) text($("#metric-caption"), metricNames.join(", "));
  }
  const later = () => { if (!redraw) redraw = requestAnimationFrame(draw); };

  function addRow(event) {
    state.header = event.header;
    if (event.epochs_total) state.epochsTotal = event.epochs_total;
    state.rows = state.rows.filter(r => r.epoch !== event.row.epoch).concat([event.row]);
    const table = $("#epochs");
    table.tHead.innerHTML = `<tr>${event.header.map(h => `<th>${h}</th>`).join("")}</tr>`;
    table.tBodies[0].innerHTML = state.rows.map(r => `<tr>${event.header.map(h =>
      `<td>${typeof r[h] === "number" && !Number.isInteger(r[h]) ? r[h].toFixed(4) : r[h]}</td>`).join("")}</tr>`).join("");
    setBar($("#epoch-progress"), state.rows.length / (state.epochsTotal || state.rows.length));
    text(epochText, `epoch ${state.rows.length} of ${state.epochsTotal || "?"}`);
    later();
  }

  // the header's device and duration, from the state events' times: it ticks while the job runs
  const clock = {started: job.started_at, ended: job.ended_at};
  function tick() {
    if (!clock.started) return;
    const seconds = Math.max(0, Math.round((clock.ended || Date.now() / 1000) - clock.started));
    text($("#job-duration"), seconds >= 3600 ? `${Math.floor(seconds / 3600)}h ${String(Math.floor(seconds % 3600 / 60)).padStart(2, "0")}m`
      : seconds >= 60 ? `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s` : `${seconds}s`);
  }
  setInterval(tick, 1000);

  function setState(name, stage) {
    const badge = $("#job-state");
    badge.className = `state ${name}`;
    text(badge, stage || name);
    show($("#stop"), ["queued", "running", "stopping"].includes(name));
    show($("#resume"), ["cancelled", "interrupted", "failed"].includes(name));
    document.body.dataset.state = name;
  }

  async function refreshLog() {
    try {
      const response = await fetch(`/jobs/${id}/log`, {credentials: "same-origin"});
      if (!response.ok) return;
      // the terminal's progress bars redraw with carriage returns: keep each line's last drawing
      const lines = (await response.text()).split("\n").map(l => l.split("\r").filter(Boolean).pop() || "");
      const log = $("#log");
      log.textContent = lines.slice(-200).join("\n");
      log.scrollTop = log.scrollHeight;
    } catch (e) { /* next time */ }
  }

  async function ended() {
    if (state.ended) return;
    state.ended = true;
    refreshLog();
    const response = await fetch(`/ui/jobs/${id}?fragment=results`, {credentials: "same-origin"});
    if (response.ok) { $("#results").innerHTML = await response.text(); wireResults(id); }
    document.body.dataset.results = "1";
  }

  function gate(event) {
    const panel = $("#lr-gate");
    show(panel, true);
    $("#lr-find-plot").src = `/jobs/${id}/files/lr_find.png?at=${event.id}`;
    const box = $("#lr-suggestions");
    box.innerHTML = "";
    for (const [name, rate] of Object.entries(event.suggestions || {})) {
      const button = document.createElement("button");
      button.type = "button"; button.dataset.suggestion = name;
      button.textContent = `${name} ${Number(rate).toExponential(2)}`;
      button.addEventListener("click", () => choose(name));
      box.appendChild(button);
    }
  }
  async function choose(rate) {
    try { await api("POST", `/jobs/${id}/lr`, {lr: rate}); fail($("#lr-error"), null); }
    catch (e) { fail($("#lr-error"), e); }
  }
  $("#lr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const typed = $("#lr-typed").value.trim();
    choose(typed === "" || isNaN(Number(typed)) ? typed : Number(typed));
  });

  const stream = new EventSource(`/jobs/${id}/events`);
  stream.addEventListener("batch", (message) => {
    const event = JSON.parse(message.data);
    if (event.phase === "train" && event.loss !== null && event.batches) state.batchLoss.push([event.epoch - 1 + event.batch / event.batches, event.loss]);
    setBar($("#batch-progress"), event.batch / event.batches);
    text(batchText, `${event.phase} batch ${event.batch} of ${event.batches}`);
    if (state.epochsTotal) setBar($("#epoch-progress"), (state.rows.length + (event.phase === "train" ? event.batch / event.batches : 1)) / state.epochsTotal);
    later();
  });
  stream.addEventListener("epoch", (message) => addRow(JSON.parse(message.data)));
  stream.addEventListener("run_started", (message) => {
    const event = JSON.parse(message.data);
    if (event.epochs_total) state.epochsTotal = event.epochs_total;
  });
  stream.addEventListener("lr_review", (message) => gate(JSON.parse(message.data)));
  stream.addEventListener("lr_chosen", () => show($("#lr-gate"), false));
  stream.addEventListener("state", (message) => {
    const event = JSON.parse(message.data);
    setState(event.state);
    show($("#lr-gate"), false);  // a gate belongs to one attempt: a new state closes it (the next lr_review reopens it)
    if (event.state === "running") { clock.started = event.at; clock.ended = null; if (event.devices) text($("#job-devices"), event.devices); }
    if (["succeeded", "failed", "cancelled", "interrupted"].includes(event.state)) clock.ended = event.at;
    tick();
    refreshLog();
    if (["succeeded", "failed", "cancelled", "interrupted"].includes(event.state)) ended();
    else { state.ended = false; }
  });
  // the stream ends when the job has: without this, EventSource would reconnect (and replay) forever
  stream.addEventListener("error", () => { if (state.ended) stream.close(); });

  $("#stop").addEventListener("click", async () => {
    try { await api("POST", `/jobs/${id}/cancel`); fail($("#action-error"), null); } catch (e) { fail($("#action-error"), e); }
  });
  $("#resume").addEventListener("click", async () => {
    try { await api("POST", `/jobs/${id}/resume`); location.reload(); } catch (e) { fail($("#action-error"), e); }
  });
  setInterval(() => { if (!state.ended && !document.hidden) refreshLog(); }, 3000);
  refreshLog();
  draw();
  wireResults(id);
}

function wireResults(id) {
  const exportButton = $("#export-onnx");
  if (exportButton && !exportButton.dataset.wired) {
    exportButton.dataset.wired = "1";
    exportButton.addEventListener("click", async () => {
      const status = $("#export-status");
      exportButton.disabled = true;
      text(status, "Exporting to ONNX and checking it against PyTorch…");
      try {
        const answer = await api("POST", `/jobs/${id}/export?format=onnx`);
        text(status, `model.onnx: ${(answer.bytes / 2 ** 20).toFixed(1)} MiB`);
        location.href = answer.url;
      } catch (e) { text(status, e.message); }
      exportButton.disabled = false;
    });
  }
  const tryForm = $("#try-form");
  if (tryForm && !tryForm.dataset.wired) {
    tryForm.dataset.wired = "1";
    tryForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = $("#try-file").files[0], out = $("#try-result");
      if (!file) { text(out, "Choose an image first."); return; }
      text(out, "Predicting…");
      try {
        const answer = await api("POST", `/jobs/${id}/predict`, file, true);
        out.innerHTML = "";
        const image = document.createElement("img");
        image.src = URL.createObjectURL(file); image.alt = file.name; image.width = 96;
        const list = document.createElement("ol");
        for (const p of answer.predictions) {
          const item = document.createElement("li");
          item.textContent = `${p.label ?? p.class} · ${(100 * p.probability).toFixed(1)}%`;
          list.appendChild(item);
        }
        out.append(image, list);
      } catch (e) { text(out, e.message); }
    });
  }
}

// --- the cleaner: the images with the highest loss, marked keep / delete / relabel --------------------------

function cleanPage() {
  const job = JSON.parse($("#job-data").textContent);
  const id = job.id;
  const marks = new Map();  // path -> {action, to}
  const status = $("#clean-status"), grid = $("#clean-grid");
  let classes = [], offset = 0, saved = null;
  const PAGE = 24;

  async function start() {
    let answer;
    try { answer = await api("POST", `/jobs/${id}/losses`); }
    catch (e) { text(status, e.message); return; }
    while (answer.state === "computing") {
      await new Promise(resolve => setTimeout(resolve, 1000));
      try { answer = await api("GET", `/jobs/${id}/losses?limit=1`); } catch (e) { text(status, e.message); return; }
    }
    if (answer.state !== "ready") { text(status, answer.error || "the losses could not be computed"); return; }
    load(true);
  }

  async function load(fresh) {
    if (fresh) { offset = 0; grid.innerHTML = ""; }
    const split = $("#clean-split").value, label = $("#clean-label").value;
    const query = new URLSearchParams({split, limit: PAGE, offset});
    if (label) query.set("label", label);
    let answer;
    try { answer = await api("GET", `/jobs/${id}/losses?${query}`); } catch (e) { text(status, e.message); return; }
    if (!classes.length) {
      classes = answer.classes;
      const select = $("#clean-label");
      for (const c of classes) select.appendChild(new Option(c, c));
    }
    for (const row of answer.rows) grid.appendChild(tile(row));
    offset += answer.rows.length;
    show($("#clean-more"), offset < answer.total);
    text(status, `${answer.total} ${split === "train" ? "training" : "validation"} image(s)${label ? ` labelled ${label}` : ""}, highest loss first; ${offset} shown.`);
    document.body.dataset.tiles = String(grid.children.length);
  }

  function tile(row) {
    const figure = document.createElement("figure");
    figure.className = "tile"; figure.dataset.path = row.path;
    const image = document.createElement("img");
    image.src = `/jobs/${id}/image?path=${encodeURIComponent(row.path)}`; image.alt = row.path; image.width = 128; image.height = 128;
    const caption = document.createElement("figcaption");
    caption.innerHTML = `<b></b> → <span></span><br><span class="sub"></span>`;
    caption.children[0].textContent = row.label;
    caption.children[1].textContent = row.predicted;
    caption.children[3].textContent = `loss ${Number(row.loss).toFixed(3)}`;
    const select = document.createElement("select");
    select.setAttribute("aria-label", `what to do with ${row.path}`);
    select.appendChild(new Option("keep", "keep"));
    select.appendChild(new Option("delete", "delete"));
    for (const c of classes) if (c !== row.label) select.appendChild(new Option(`relabel: ${c}`, `relabel:${c}`));
    const mark = marks.get(row.path);
    if (mark) select.value = mark.action === "delete" ? "delete" : `relabel:${mark.to}`;
    select.addEventListener("change", () => {
      if (select.value === "keep") marks.delete(row.path);
      else if (select.value === "delete") marks.set(row.path, {path: row.path, action: "delete"});
      else marks.set(row.path, {path: row.path, action: "relabel", to: select.value.slice(8)});
      figure.dataset.mark = select.value;
      summarise();
    });
    figure.append(image, caption, select);
    return figure;
  }

  function summarise() {
    const list = [...marks.values()];
    const deletes = list.filter(m => m.action === "delete").length;
    text($("#clean-summary"), list.length ? `${list.length} change(s) marked: ${list.length - deletes} relabel, ${deletes} delete.` : "No changes marked.");
    $("#clean-save").disabled = !list.length;
  }

  $("#clean-split").addEventListener("change", () => load(true));
  $("#clean-label").addEventListener("change", () => load(true));
  $("#clean-more").addEventListener("click", () => load(false));
  $("#clean-save").addEventListener("click", async () => {
    const button = $("#clean-save");
    button.disabled = true;
    try {
      saved = await api("POST", `/jobs/${id}/versions`, {changes: [...marks.values()], note: $("#clean-note").value.trim() || null});
      fail($("#clean-error"), null);
      text($("#clean-saved-text"), `Saved as version ${saved.version} of the dataset (${saved.images} images). The files of earlier versions are unchanged.`);
      show($("#clean-saved"), true);
      marks.clear(); summarise();
      document.body.dataset.savedVersion = String(saved.version);
    } catch (e) { fail($("#clean-error"), e); button.disabled = false; }
  });
  $("#train-again").addEventListener("click", async () => {
    try {
      const again = await api("POST", `/jobs/${id}/again`, {version: saved.version});
      location.href = `/ui/jobs/${again.id}`;
    } catch (e) { fail($("#clean-error"), e); }
  });
  start();
}

document.addEventListener("DOMContentLoaded", () => {
  const pages = {jobs: jobsPage, new: newJobPage, job: jobPage, clean: cleanPage};
  const start = pages[document.body.dataset.page];
  if (start) start();
});
