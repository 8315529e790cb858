"use strict";
// The agegender page: send a photo to POST /v1/predict and draw what comes back. No libraries, no network
// access beyond this server.

const $ = (selector) => document.querySelector(selector);
const COLORS = { female: "#e63c8c", male: "#2878e6" };

function show(el, visible) { el.hidden = !visible; }

function setStatus(text) {
  $("#status").textContent = text || "";
  show($("#status"), Boolean(text));
}

function setError(text) {
  $("#error").textContent = text || "";
  show($("#error"), Boolean(text));
}

// "34 ±5, female 0.97": the ± is half the age interval, the number after the gender its probability
// (the same text as agegender.annotate.label).
function faceLabel(face) {
  let age = `${Math.round(face.age)}`;
  if (face.age_low !== null && face.age_high !== null) {
    age += ` ±${Math.round((face.age_high - face.age_low) / 2)}`;
  }
  const confidence = face.gender === "female" ? face.p_female : 1 - face.p_female;
  return `${age}, ${face.gender} ${confidence.toFixed(2)}`;
}

function loadImage(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot display this file")); };
    img.src = url;
  });
}

// Each face's box, landmarks and label on ``canvas`` (its pixels already drawn, or clear for the live overlay);
// boxes are in pixels of the image the server decoded (answer.width x answer.height), scaled to the canvas. Labels
// stay inside the canvas: above the box where there is room, else inside it, shifted left at the right edge.
// Returns each label's rectangle [x, y, w, h] in canvas pixels.
function drawFaces(canvas, answer, labelOf = faceLabel) {
  const ctx = canvas.getContext("2d");
  const sx = canvas.width / answer.width;
  const sy = canvas.height / answer.height;
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  const fontSize = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 40));
  ctx.font = `bold ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  return answer.faces.map((face) => {
    const [x1, y1, x2, y2] = face.box;
    const color = COLORS[labelOf === faceLabel ? face.gender : face.track_estimate.gender] || "#444";
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    ctx.fillStyle = "#ffdc00";
    face.landmarks.forEach(([x, y]) => {
      ctx.beginPath();
      ctx.arc(x * sx, y * sy, line, 0, 2 * Math.PI);
      ctx.fill();
    });
    const text = labelOf(face);
    const w = Math.min(ctx.measureText(text).width + 2 * line, canvas.width);
    const h = fontSize + 2 * line;
    const tx = Math.max(0, Math.min(x1 * sx, canvas.width - w));
    const above = y1 * sy - h;
    const ty = Math.max(0, Math.min(above >= 0 ? above : y1 * sy, canvas.height - h));
    ctx.fillStyle = color;
    ctx.fillRect(tx, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, tx + line, ty + line, w - 2 * line);
    return [tx, ty, w, h];
  });
}

// img: an <img> or a <canvas>, drawn with the faces on the result panel's canvas.
function draw(img, answer, labelOf = faceLabel) {
  const canvas = $("#canvas");
  canvas.width = img.naturalWidth || img.width;
  canvas.height = img.naturalHeight || img.height;
  canvas.getContext("2d").drawImage(img, 0, 0);
  return drawFaces(canvas, answer, labelOf);
}

function fmt(x, digits) { return x === null || x === undefined ? "–" : x.toFixed(digits); }

function fillTable(answer) {
  const tbody = $("#faces tbody");
  const labels = $("#labels");
  tbody.replaceChildren();
  labels.replaceChildren();
  answer.faces.forEach((face, i) => {
    const tr = document.createElement("tr");
    tr.className = "face-row";
    const interval = face.age_low === null ? "–" : `${fmt(face.age_low, 1)} – ${fmt(face.age_high, 1)}`;
    [i + 1, fmt(face.age, 1), interval, face.gender, fmt(face.p_female, 3), fmt(face.det_score, 3)]
      .forEach((value) => {
        const td = document.createElement("td");
        td.textContent = value;
        tr.appendChild(td);
      });
    tbody.appendChild(tr);
    const li = document.createElement("li");
    li.className = "face-label";
    li.style.borderColor = COLORS[face.gender] || "#444";
    li.textContent = faceLabel(face);
    labels.appendChild(li);
  });
  show($("#faces"), answer.faces.length > 0);
  show($("#no-face"), answer.faces.length === 0);
  const t = answer.timing_ms;
  const dropped = answer.faces_dropped ? ` · ${answer.faces_found} faces found, the ${answer.faces.length} ` +
    "largest shown" : "";
  $("#timing").textContent = `${answer.width}×${answer.height} px${dropped} · decode ${t.decode} ms · detect + predict ` +
    `${t.detect_predict} ms · server total ${t.total} ms · round trip ${answer.roundTripMs} ms · ${answer.model}`;
}

async function analyse(blob, name) {
  setError("");
  setStatus(`Analysing ${name}…`);
  document.body.classList.add("busy");
  try {
    const img = await loadImage(blob).catch(() => null);
    const form = new FormData();
    form.append("file", blob, name);
    const t0 = performance.now();
    const response = await fetch("/v1/predict", { method: "POST", body: form });
    const answer = await response.json().catch(() => ({ error: "bad_response", detail: response.statusText }));
    if (!response.ok) {
      throw new Error(`${answer.detail || response.statusText} (HTTP ${response.status} ${answer.error || ""})`);
    }
    answer.roundTripMs = Math.round(performance.now() - t0);
    show($("#result"), true);
    show($("#canvas"), Boolean(img)); // a format the server reads but this browser cannot show (e.g. TIFF)
    if (img) {
      draw(img, answer);
      URL.revokeObjectURL(img.src);
    }
    fillTable(answer);
    setStatus("");
  } catch (e) {
    setStatus("");
    show($("#result"), false);
    setError(`Error: ${e.message}`);
  } finally {
    document.body.classList.remove("busy");
  }
}

// ---- file input and drag and drop

$("#file-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) analyse(file, file.name);
  event.target.value = "";
});

const dropzone = $("#dropzone");
["dragenter", "dragover"].forEach((type) => dropzone.addEventListener(type, (event) => {
  event.preventDefault();
  dropzone.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("over")));
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) analyse(file, file.name);
});

// ---- webcam (only in browsers and contexts that allow it: https or localhost)

let stream = null;

function stopCamera() {
  stopLive();
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  $("#video").srcObject = null;
  show($("#camera"), false);
}

if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
  $("#camera-button").addEventListener("click", async () => {
    setError("");
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      $("#video").srcObject = stream;
      show($("#camera"), true);
    } catch (e) {
      setError(`Error: the webcam is not available (${e.name}: ${e.message})`);
    }
  });
  $("#camera-stop").addEventListener("click", stopCamera);
  $("#live-button").addEventListener("click", () => (live ? stopLive() : startLive()));
  $("#snap-button").addEventListener("click", () => {
    const video = $("#video");
    const shot = document.createElement("canvas");
    shot.width = video.videoWidth;
    shot.height = video.videoHeight;
    shot.getContext("2d").drawImage(video, 0, 0);
    shot.toBlob((blob) => analyse(blob, "webcam.jpg"), "image/jpeg", 0.92);
  });
} else {
  $("#camera-button").disabled = true;
  $("#camera-hint").textContent = "Webcam unavailable here (the browser needs https or localhost).";
}

// ---- live mode: a frame every LIVE_INTERVAL_MS to the server over a WebSocket, never more than one in flight
// (the next frame is captured only once the last one is answered); the server keeps this connection's tracks and
// answers with each face's track number and that track's running estimate.

const LIVE_INTERVAL_MS = 300;
const LIVE_MAX_SIDE = 640; // frames are scaled down to this longer side before sending
const LIVE_LOG = 200; // send/answer times kept for the frame rate (and for the browser test)
let live = null;

// "#2 34 ±3, female 0.95": the track number and its running estimate (as agegender.annotate.draw_tracks).
function trackLabel(face) {
  return `#${face.track} ${faceLabel(face.track_estimate)}`;
}

function liveFrame(state) {
  const video = $("#video");
  if (state.stopped || state.inFlight > 0) return;
  if (!video.videoWidth) {
    state.timer = setTimeout(() => liveFrame(state), 50); // the camera has no picture yet
    return;
  }
  const scale = Math.min(1, LIVE_MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  const shot = document.createElement("canvas");
  shot.width = Math.round(video.videoWidth * scale);
  shot.height = Math.round(video.videoHeight * scale);
  shot.getContext("2d").drawImage(video, 0, 0, shot.width, shot.height);
  state.inFlight += 1; // counted from the capture, so that no second frame starts while this one is encoded
  state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
  shot.toBlob((blob) => {
    if (state.stopped) return;
    state.log.push({ sent: performance.now(), received: null });
    if (state.log.length > LIVE_LOG) state.log.shift();
    state.sent += 1;
    state.socket.send(blob);
  }, "image/jpeg", 0.85);
}

function liveRate(log) {
  const done = log.filter((entry) => entry.received !== null).slice(-10);
  if (done.length < 2) return 0;
  return (1000 * (done.length - 1)) / (done[done.length - 1].sent - done[0].sent);
}

// The live answer drawn over the video (the overlay canvas has the video's own pixel size and lies on top of
// it), the people listed under it.
function showLive(state, answer, roundTrip) {
  const video = $("#video");
  const overlay = $("#overlay");
  overlay.width = video.videoWidth;
  overlay.height = video.videoHeight;
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  state.drawn = { width: overlay.width, height: overlay.height, labels: drawFaces(overlay, answer, trackLabel) };
  show($("#result"), true);
  show($("#canvas"), false);
  const labels = $("#labels");
  labels.replaceChildren();
  answer.faces.forEach((face) => {
    const li = document.createElement("li");
    li.className = "face-label track-label";
    li.style.borderColor = COLORS[face.track_estimate.gender] || "#444";
    li.textContent = `${trackLabel(face)} · ${face.track_estimate.frames} frames`;
    labels.appendChild(li);
  });
  show($("#faces"), false);
  show($("#no-face"), false);
  $("#timing").textContent = `live · ${liveRate(state.log).toFixed(1)} frames/s · round trip ${Math.round(roundTrip)}` +
    ` ms · server ${answer.timing_ms.detect_predict_track} ms · ${answer.tracks} ` +
    `${answer.tracks === 1 ? "person" : "people"} so far`;
}

function liveAnswer(state, event) {
  const now = performance.now();
  const entry = state.log[state.log.length - 1];
  entry.received = now;
  state.inFlight -= 1;
  state.received += 1;
  const answer = JSON.parse(event.data);
  if (answer.error) {
    setError(`Live: ${answer.detail} (${answer.error})`);
  } else {
    setError("");
    showLive(state, answer, now - entry.sent);
  }
  // Keep the pace: the next frame goes LIVE_INTERVAL_MS after this one was sent, or at once if the answer took
  // longer than that.
  state.timer = setTimeout(() => liveFrame(state), Math.max(0, LIVE_INTERVAL_MS - (now - entry.sent)));
}

function startLive() {
  setError("");
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const state = {
    socket: new WebSocket(`${scheme}://${window.location.host}/v1/track`),
    inFlight: 0, maxInFlight: 0, sent: 0, received: 0, log: [], stopped: false, timer: null, drawn: null,
  };
  window.agegenderLive = state; // counters and the send/answer log, for the browser test and the curious
  state.socket.onopen = () => liveFrame(state);
  state.socket.onmessage = (event) => liveAnswer(state, event);
  state.socket.onclose = (event) => {
    if (state.stopped) return;
    stopLive();
    setError(`Live stopped: the server closed the connection (${event.code} ${event.reason || "no reason given"})`);
  };
  live = state;
  $("#live-button").textContent = "Stop live";
  $("#live-button").setAttribute("aria-pressed", "true");
  $("#snap-button").disabled = true;
}

function stopLive() {
  if (!live) return;
  live.stopped = true;
  clearTimeout(live.timer);
  live.socket.close();
  live = null;
  const overlay = $("#overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  $("#live-button").textContent = "Start live";
  $("#live-button").setAttribute("aria-pressed", "false");
  $("#snap-button").disabled = false;
}

// ---- model information in the footer, and whether this server can follow faces live

fetch("/v1/model")
  .then((r) => r.json())
  .then((card) => {
    const cov = card.calibration && card.calibration.age_interval;
    $("#model-info").textContent = `model: ${card.model}` +
      (cov ? ` · age interval covers ${Math.round(100 * cov.coverage)}% of true ages` : "");
    if (card.live && !card.live.available) {
      $("#live-button").disabled = true;
      $("#live-button").title = card.live.detail;
      $("#live-hint").textContent = `Live tracking is not available on this server. ${card.live.detail}.`;
    }
  })
  .catch(() => { $("#model-info").textContent = "model: unknown"; });
