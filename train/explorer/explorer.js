// The attention explorer: asks the server (POST /attention) for a sentence's translation and every
// attention map behind it, and draws the chosen kind / layer / head as a table of rows x columns cells.
"use strict";

const $ = (id) => document.getElementById(id);
const KIND_NAMES = {
  cross: "encoder-decoder (cross) attention",
  encoder_self: "encoder self-attention",
  decoder_self: "decoder self-attention (causal)",
  alignment: "alignment (RNN attention)",
};
let answer = null;

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  select.appendChild(o);
}

function fill(select, count, label) {
  select.replaceChildren();
  for (let i = 0; i < count; i++) option(select, i, `${label} ${i + 1}`);
  select.disabled = count < 2;
}

function color(w) {
  // 0 -> white, 1 -> deep blue
  const t = Math.max(0, Math.min(1, w));
  const r = Math.round(255 - t * (255 - 29)), g = Math.round(255 - t * (255 - 78)), b = Math.round(255 - t * (255 - 216));
  return `rgb(${r}, ${g}, ${b})`;
}

function tokens(side) {
  return side === "source" ? answer.source_tokens : answer.target_tokens;
}

function draw() {
  const table = $("heatmap");
  table.replaceChildren();
  const map = answer.attention[$("kind").value];
  if (!map) return;
  const weights = map.weights[Number($("layer").value)][Number($("head").value)]; // [rows][cols]
  const rows = tokens(map.rows), cols = tokens(map.cols);
  $("caption").textContent = `${KIND_NAMES[$("kind").value] || $("kind").value}: rows are ${map.rows} tokens, ` +
    `columns ${map.cols} tokens (${rows.length} x ${cols.length}).`;
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  cols.forEach((token, j) => {
    const th = document.createElement("th");
    th.textContent = token;
    th.dataset.col = j;
    head.appendChild(th);
  });
  const body = table.createTBody();
  rows.forEach((token, i) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.textContent = token;
    th.dataset.row = i;
    tr.appendChild(th);
    cols.forEach((_, j) => {
      const td = tr.insertCell();
      td.className = "cell";
      td.dataset.row = i;
      td.dataset.col = j;
      td.dataset.weight = weights[i][j];
      td.style.background = color(weights[i][j]);
      td.title = `${token} -> ${cols[j]}: ${weights[i][j].toFixed(3)}`;
    });
  });
}

function highlight(event) {
  const cell = event.target.closest("td.cell");
  document.querySelectorAll("#heatmap .lit").forEach((e) => e.classList.remove("lit"));
  if (!cell) return;
  const map = answer.attention[$("kind").value];
  cell.classList.add("lit");
  document.querySelector(`#heatmap tbody th[data-row="${cell.dataset.row}"]`).classList.add("lit");
  document.querySelector(`#heatmap thead th[data-col="${cell.dataset.col}"]`).classList.add("lit");
  const row = tokens(map.rows)[cell.dataset.row], col = tokens(map.cols)[cell.dataset.col];
  $("hover").textContent = `${map.rows} "${row}" -> ${map.cols} "${col}": weight ${Number(cell.dataset.weight).toFixed(3)}`;
}

function chooseKind() {
  const map = answer.attention[$("kind").value];
  fill($("layer"), map.layers, "layer");
  fill($("head"), map.heads, "head");
  draw();
}

function show(data) {
  answer = data;
  $("result").hidden = false;
  $("translation").textContent = data.translation || "(empty)";
  const list = $("nbest-list");
  list.replaceChildren();
  (data.nbest || []).forEach((h) => {
    const li = document.createElement("li");
    li.textContent = h.translation || "(empty)";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = h.score === null ? "(cut at the length limit)" : `score ${h.score.toFixed(3)}`;
    li.appendChild(score);
    list.appendChild(li);
  });
  const kinds = Object.keys(data.attention);
  const kind = $("kind");
  const previous = kind.value;
  kind.replaceChildren();
  kinds.forEach((k) => option(kind, k, KIND_NAMES[k] || k));
  if (!kinds.length) {
    $("controls").hidden = true;
    $("heatmap").replaceChildren();
    $("caption").textContent = "This model has no attention: the decoder reads one fixed-size context vector.";
    return;
  }
  $("controls").hidden = false;
  if (kinds.includes(previous)) kind.value = previous;
  chooseKind();
}

async function ask(event) {
  event.preventDefault();
  const sentence = $("sentence").value;
  $("submit").disabled = true;
  $("status").className = "";
  $("status").textContent = "Translating…";
  try {
    const response = await fetch("attention", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sentence, nbest: Number($("nbest").value) }),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    show(data);
    $("status").textContent = "";
  } catch (e) {
    $("status").className = "error";
    $("status").textContent = `error: ${e.message}`;
  } finally {
    $("submit").disabled = false;
  }
}

async function describe() {
  try {
    const info = await (await fetch("info")).json();
    const data = info.config.data;
    $("model").textContent = `${info.family} model, ${info.parameters.toLocaleString()} parameters, step ${info.step}` +
      ` (${info.checkpoint} checkpoint), ${data.source_lang || "source"} → ${data.target_lang || "target"}` +
      ` on ${data.dataset}; vocabulary ${info.vocabulary.target}.`;
  } catch (e) {
    $("model").textContent = `Could not describe the model: ${e.message}`;
  }
}

$("ask").addEventListener("submit", ask);
$("kind").addEventListener("change", chooseKind);
$("layer").addEventListener("change", draw);
$("head").addEventListener("change", draw);
$("heatmap").addEventListener("mouseover", highlight);
describe();
