// SwishNet Live in the browser: the microphone over WS /v1/stream, files over POST /v1/classify.
// URLs are relative to the page, so it also works behind a path prefix.
"use strict";

const LIVE_WINDOW_S = 60; // the live timeline shows the last minute
const $ = (id) => document.getElementById(id);

let labels = ["speech", "music", "noise"]; // replaced by the served model's labels
let live = null; // the running microphone session

// ---- the service's key (SWISHNET_API_KEY), when it has one ----
// Asked for when the service answers 401, kept for this tab only. Fetches send it as a Bearer token;
// WebSockets, which cannot carry headers from a browser, offer it as the subprotocol swishnet.key.<base64url>.

const KEY_STORAGE = "swishnet-key";
let apiKey = sessionStorage.getItem(KEY_STORAGE);

function base64url(text) {
  let binary = "";
  new TextEncoder().encode(text).forEach((byte) => { binary += String.fromCharCode(byte); });
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function keyProtocols() {
  return apiKey ? ["swishnet", `swishnet.key.${base64url(apiKey)}`] : [];
}

async function apiFetch(url, options = {}) {
  const headers = { ...(options.headers ?? {}), ...(apiKey ? { Authorization: `Bearer ${apiKey}` } : {}) };
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) askForKey(apiKey ? "That key was refused." : "");
  return response;
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-status").textContent = message;
  $("key-input").focus();
}

function useKey(event) {
  event.preventDefault();
  apiKey = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  $("key-form").hidden = true;
  loadLabels();
}

// ---- drawing ----

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function buildProbabilityBars() {
  $("live-probs").replaceChildren(...labels.map((label) => element("div", { class: "prob" },
    element("span", { class: "prob-name", id: `prob-name-${label}` }, label),
    element("div", { class: "bar", role: "meter", "aria-labelledby": `prob-name-${label}`, "aria-valuemin": "0",
                     "aria-valuemax": "1", "aria-valuenow": "0" }, element("div", { class: `fill label-${label}` })),
    element("span", { class: "prob-value" }, "0.00"),
  )));
  for (const legend of document.querySelectorAll(".legend")) { // one beside each timeline
    legend.replaceChildren(...[...labels, "silence"].map((label) =>
      element("li", { "data-label": label }, element("span", { class: `swatch label-${label}` }), label)));
  }
}

function clearNow() {
  $("live-label").textContent = "—";
  $("live-label").dataset.label = "";
  $("live-time").textContent = "";
  showProbabilities({});
}

function showProbabilities(probs) {
  labels.forEach((label, i) => {
    const row = $("live-probs").children[i];
    const p = probs[label] ?? 0;
    row.querySelector(".bar").setAttribute("aria-valuenow", p.toFixed(2));
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".prob-value").textContent = p.toFixed(2);
  });
}

function formatSegment(segment) {
  const span = `${segment.start.toFixed(1)}–${segment.end.toFixed(1)} s`;
  return `${span}: ${segment.label} (${segment.confidence.toFixed(2)})`;
}

// Segments as coloured blocks over [startS, endS] with a time axis under them (both hidden from screen
// readers), and as a text list, which keeps its newest entry in view unless the reader has scrolled up.
function drawTimeline(timeline, axis, list, segments, startS, endS) {
  const span = Math.max(endS - startS, 1e-6);
  timeline.hidden = false;
  timeline.replaceChildren(...segments.filter((s) => s.end > startS).map((segment) => {
    const from = Math.max(segment.start, startS);
    const block = element("div", { class: `block label-${segment.label}${segment.pending ? " pending" : ""}`,
                                   title: formatSegment(segment) });
    block.style.left = `${(100 * (from - startS)) / span}%`;
    block.style.width = `${(100 * (segment.end - from)) / span}%`;
    return block;
  }));
  drawAxis(axis, Math.max(startS, 0), endS, startS, span);
  const following = list.scrollHeight - list.scrollTop - list.clientHeight < 8; // at the end already
  list.replaceChildren(...segments.filter((s) => !s.pending).map((segment) =>
    element("li", { "data-label": segment.label }, formatSegment(segment))));
  if (following) list.scrollTop = list.scrollHeight;
}

const TICK_STEPS_S = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

function formatTime(seconds) {
  if (seconds < 60) return `${Number(seconds.toFixed(1))} s`;
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds - 60 * minutes);
  return `${minutes}:${String(rest).padStart(2, "0")}`;
}

// Ticks at round times from fromS to toS, positioned over [originS, originS + span], spaced for the whole
// span (at most about 7 across it): the live timeline's first seconds get few ticks, not crowded ones.
function drawAxis(axis, fromS, toS, originS, span) {
  const step = TICK_STEPS_S.find((candidate) => span / candidate <= 6) ?? TICK_STEPS_S.at(-1);
  const ticks = [];
  for (let t = Math.ceil(fromS / step - 1e-9) * step; t <= toS + 1e-9; t += step) ticks.push(t);
  axis.replaceChildren(...ticks.map((t, i) => {
    const position = (100 * (t - originS)) / span;
    const edge = position < 4 ? " first" : position > 96 ? " last" : "";
    const tick = element("span", { class: `tick${edge}`, "data-time": String(t) }, formatTime(t));
    tick.style.left = `${position}%`;
    return tick;
  }));
}

// ---- microphone ----

function streamUrl(sampleRate) {
  const url = new URL("v1/stream", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ sample_rate: Math.round(sampleRate), encoding: "pcm_f32le" });
  return url;
}

function onLiveEvent(session, event) {
  if (session !== live) return; // a late event of an earlier session
  if (event.type === "error") {
    setMicStatus(`The service stopped the stream: ${event.message}`);
    return;
  }
  if (event.type === "label" && session.released) return; // stopped: "Now" stays cleared
  if (event.type === "segment") {
    session.segments.push(event);
    session.segments = session.segments.filter((s) => s.end > event.end - LIVE_WINDOW_S);
  } else {
    session.timeS = event.time;
    $("live-label").textContent = event.label;
    $("live-label").dataset.label = event.label;
    $("live-time").textContent = `at ${event.time.toFixed(1)} s`;
    showProbabilities(event.probs);
  }
  // Segments close about 1.5 s late; until then the current label stands for the open stretch.
  const closedS = session.segments.length ? session.segments[session.segments.length - 1].end : 0;
  const label = $("live-label").dataset.label;
  const open = { start: closedS, end: session.timeS, label, confidence: 0, pending: true };
  const shown = open.end > open.start && open.label ? [...session.segments, open] : session.segments;
  drawTimeline($("live-timeline"), $("live-axis"), $("live-segments"), shown, session.timeS - LIVE_WINDOW_S,
               session.timeS);
}

async function startMic() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this page needs a secure origin for the microphone: open it over https or from localhost");
  }
  // Raw audio: the model was trained without the browser's voice processing.
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule("web/capture-worklet.js");
  const capture = new AudioWorkletNode(context, "pcm-capture", { numberOfInputs: 1, numberOfOutputs: 0 });
  const socket = new WebSocket(streamUrl(context.sampleRate), keyProtocols());
  socket.binaryType = "arraybuffer";
  const session = { media, context, socket, segments: [], timeS: 0 };
  live = session;
  capture.port.onmessage = (message) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(message.data);
  };
  socket.onopen = () => {
    context.createMediaStreamSource(media).connect(capture);
    setMicStatus(`Listening (${context.sampleRate} Hz).`);
  };
  socket.onmessage = (message) => onLiveEvent(session, JSON.parse(message.data));
  socket.onclose = (close) => {
    releaseMic(session);
    if (session === live && close.code !== 1000) {
      setMicStatus(`Disconnected (${close.code}${close.reason ? ": " + close.reason : ""}).`);
    }
  };
  setMicButton(true);
}

function stopMic() {
  setMicStatus("Stopped.");
  if (live.socket.readyState === WebSocket.OPEN) {
    live.socket.send(JSON.stringify({ type: "end" })); // the service sends the last segment, then closes
  }
  releaseMic(live);
}

function releaseMic(session) {
  if (session.released) return;
  session.released = true;
  session.media.getTracks().forEach((track) => track.stop());
  session.context.close();
  if (session === live) {
    setMicButton(false);
    clearNow(); // nothing is heard now
  }
}

function setMicButton(running) {
  $("mic-button").textContent = running ? "Stop microphone" : "Start microphone";
  $("mic-button").setAttribute("aria-pressed", String(running));
}

function setMicStatus(text) {
  $("mic-status").textContent = text;
}

async function toggleMic() {
  if (live && !live.released) {
    stopMic();
    return;
  }
  setMicStatus("Starting…");
  try {
    await startMic();
  } catch (error) {
    const denied = error.name === "NotAllowedError";
    setMicStatus(denied ? "Microphone access was denied: allow it in the site settings, then retry."
                        : `Cannot start the microphone: ${error.message}`);
  }
}

// ---- files ----

async function classifyFile(file) {
  $("file-result").hidden = true; // until this file's result is in: an error must not show the last file's
  $("file-status").textContent = `Classifying ${file.name}…`;
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await apiFetch("v1/classify", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      $("file-status").textContent = `${file.name}: ${detail}`;
      return;
    }
    $("file-status").textContent = `${file.name}: ${body.duration.toFixed(1)} s, mostly ${body.label}.`;
    $("file-result").hidden = false;
    drawTimeline($("file-timeline"), $("file-axis"), $("file-segments"), body.segments, 0, body.duration);
    $("file-segments").scrollTop = 0;
    offerDownloads(file.name, body);
  } catch (error) {
    $("file-status").textContent = `${file.name}: the service could not be reached (${error.message}).`;
  }
}

// ---- the file's result as files: what `swishnet classify --format json|csv|textgrid` writes ----

// A number as Python prints a float (2.0, not 2), so that the files equal the command's.
function pyFloat(x) {
  return Number.isInteger(x) ? x.toFixed(1) : String(x);
}

function csvField(text) {
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function resultCsv(name, body) {
  const rows = [["file", "labels", "start", "stop", "confidence"],
    ...body.segments.map((s) => [name, s.label, pyFloat(s.start), pyFloat(s.end), pyFloat(s.confidence)])];
  return rows.map((row) => row.map(csvField).join(",")).join("\n") + "\n";
}

function resultTextGrid(body) {
  const duration = pyFloat(body.duration);
  const lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", `xmax = ${duration}`,
    "tiers? <exists>", "size = 1", "item []:", "    item [1]:", '        class = "IntervalTier"',
    '        name = "class"', "        xmin = 0", `        xmax = ${duration}`,
    `        intervals: size = ${body.segments.length}`];
  body.segments.forEach((s, i) => lines.push(`        intervals [${i + 1}]:`, `            xmin = ${pyFloat(s.start)}`,
    `            xmax = ${pyFloat(s.end)}`, `            text = "${s.label}"`));
  return lines.join("\n") + "\n";
}

function offerDownloads(fileName, body) {
  const stem = fileName.replace(/\.[^.]*$/, "") || "result";
  const files = {
    "download-json": [`${stem}.json`, JSON.stringify(body, null, 2) + "\n", "application/json"],
    "download-csv": [`${stem}.csv`, resultCsv(fileName, body), "text/csv"],
    "download-textgrid": [`${stem}.TextGrid`, resultTextGrid(body), "text/plain"],
  };
  for (const [id, [name, text, type]] of Object.entries(files)) {
    const link = $(id);
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: `${type};charset=utf-8` }));
    link.download = name;
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) classifyFile(event.dataTransfer.files[0]);
  });
  $("file-input").addEventListener("change", (event) => {
    if (event.target.files.length) classifyFile(event.target.files[0]);
  });
}

async function loadLabels() {
  try {
    const response = await apiFetch("v1/model");
    if (response.ok) labels = (await response.json()).labels;
  } catch {
    // keep the default labels: the page still works, the bars are named after the usual classes
  }
  buildProbabilityBars();
}

$("mic-button").addEventListener("click", toggleMic);
$("key-form").addEventListener("submit", useKey);
setUpDropZone();
loadLabels();
