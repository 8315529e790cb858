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

function draw(img, answer) {
  const canvas = $("#canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  // Boxes are in pixels of the image the server decoded; scale in case the browser's differs.
  const sx = canvas.width / answer.width;
  const sy = canvas.height / answer.height;
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  const fontSize = Math.max(12, Math.round(Math.max(canvas.width, canvas.height) / 40));
  ctx.font = `bold ${fontSize}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  answer.faces.forEach((face) => {
    const [x1, y1, x2, y2] = face.box;
    const color = COLORS[face.gender] || "#444";
    ctx.lineWidth = line;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    ctx.fillStyle = "#ffdc00";
    face.landmarks.forEach(([x, y]) => {
      ctx.beginPath();
      ctx.arc(x * sx, y * sy, line, 0, 2 * Math.PI);
      ctx.fill();
    });
    const text = faceLabel(face);
    const w = ctx.measureText(text).width + 2 * line;
    const h = fontSize + 2 * line;
    const tx = x1 * sx;
    const ty = Math.max(0, y1 * sy - h);
    ctx.fillStyle = color;
    ctx.fillRect(tx, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, tx + line, ty + line);
  });
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

// ---- model information in the footer

fetch("/v1/model")
  .then((r) => r.json())
  .then((card) => {
    const cov = card.calibration && card.calibration.age_interval;
    $("#model-info").textContent = `model: ${card.model}` +
      (cov ? ` · age interval covers ${Math.round(100 * cov.coverage)}% of true ages` : "");
  })
  .catch(() => { $("#model-info").textContent = "model: unknown"; });
