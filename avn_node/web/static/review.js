// The review page: circles on the femoral heads, stage / notes / side / view, confirm → POST /api/v1/labels.
"use strict";
(() => {
  const state = JSON.parse(document.getElementById("state").textContent);
  const svg = document.getElementById("board");
  const layer = document.getElementById("heads");
  const panels = document.getElementById("head-panels");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const STAGE_KEYS = { 1: "absence", 2: "II", 3: "III", 4: "IV" };
  const NS = "http://www.w3.org/2000/svg";
  let heads = state.heads.map((h) => ({ side: h.side, circle: h.circle.slice(), stage: h.stage,
                                        notes: h.notes.filter((n) => state.notes[n].includes(h.stage)) }));
  let view = state.view;
  let selected = heads.length ? 0 : -1;
  let adding = false;
  const defaultRadius = () => (heads.length ? heads[0].circle[2] : Math.min(state.columns, state.rows) * 0.06);

  function toImage(event) {
    const p = svg.createSVGPoint();
    p.x = event.clientX; p.y = event.clientY;
    const q = p.matrixTransform(svg.getScreenCTM().inverse());
    return [Math.max(0, Math.min(state.columns, q.x)), Math.max(0, Math.min(state.rows, q.y))];
  }

  function clampNotes(h) { h.notes = h.notes.filter((n) => state.notes[n].includes(h.stage)); }

  function draw() {
    layer.replaceChildren();
    heads.forEach((h, i) => {
      const [cx, cy, r] = h.circle;
      const colour = h.stage === "absence" ? "#6bd38a" : "#ff6b6b";
      const ring = document.createElementNS(NS, "circle");
      Object.entries({ cx, cy, r, fill: "transparent", stroke: colour, "stroke-width": i === selected ? r * 0.06 : r * 0.03,
                       class: "head", "data-index": i }).forEach(([k, v]) => ring.setAttribute(k, v));
      ring.style.cursor = "move";
      ring.addEventListener("pointerdown", (e) => startDrag(e, i, "move"));
      const handle = document.createElementNS(NS, "circle");
      Object.entries({ cx: cx + r, cy, r: Math.max(r * 0.12, 6), fill: colour, class: "handle", "data-index": i })
        .forEach(([k, v]) => handle.setAttribute(k, v));
      handle.style.cursor = "ew-resize";
      handle.addEventListener("pointerdown", (e) => startDrag(e, i, "resize"));
      const label = document.createElementNS(NS, "text");
      Object.entries({ x: cx - r, y: cy - r * 1.08, fill: colour, "font-size": r * 0.35 })
        .forEach(([k, v]) => label.setAttribute(k, v));
      label.textContent = `${h.side} ${h.stage}`;
      layer.append(ring, handle, label);
    });
    panels.replaceChildren(...heads.map(panel));
    document.querySelectorAll("[data-view]").forEach((b) => b.classList.toggle("primary", b.dataset.view === view));
  }

  function button(text, on, active, attrs = {}) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = text;
    if (active) b.classList.add("primary");
    Object.entries(attrs).forEach(([k, v]) => b.setAttribute(k, v));
    b.addEventListener("click", () => { on(); draw(); });
    return b;
  }

  function panel(h, i) {
    const box = document.createElement("fieldset");
    box.className = i === selected ? "head-panel selected" : "head-panel";
    box.dataset.index = i;
    box.addEventListener("click", () => { if (selected !== i) { selected = i; draw(); } });
    const legend = document.createElement("legend");
    legend.textContent = `Head ${i + 1}`;
    box.append(legend, "Side ");
    for (const side of ["R", "L"]) box.append(button(side, () => { h.side = side; }, h.side === side, { "data-side": side }));
    box.append(document.createElement("br"), "Stage ");
    for (const stage of state.stages) {
      box.append(button(stage, () => { h.stage = stage; clampNotes(h); }, h.stage === stage, { "data-stage": stage }));
    }
    box.append(document.createElement("br"));
    for (const [note, stages] of Object.entries(state.notes)) {
      const allowed = stages.includes(h.stage);
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.checked = h.notes.includes(note); input.disabled = !allowed;
      input.dataset.note = note;
      input.addEventListener("change", () => {
        h.notes = input.checked ? [...h.notes, note] : h.notes.filter((n) => n !== note);
      });
      label.append(input, ` ${note.replaceAll("_", " ")} `);
      label.className = allowed ? "" : "muted";
      box.append(label);
    }
    box.append(document.createElement("br"),
               button("Delete head", () => { heads.splice(i, 1); selected = heads.length ? 0 : -1; }, false,
                      { "data-delete": i }));
    return box;
  }

  function startDrag(event, i, mode) {
    event.preventDefault(); event.stopPropagation();
    selected = i;
    const h = heads[i];
    const [x0, y0] = toImage(event);
    const [cx0, cy0] = h.circle;
    svg.setPointerCapture(event.pointerId);
    const move = (e) => {
      const [x, y] = toImage(e);
      if (mode === "move") h.circle = [cx0 + x - x0, cy0 + y - y0, h.circle[2]];
      else h.circle = [h.circle[0], h.circle[1], Math.max(4, Math.hypot(x - h.circle[0], y - h.circle[1]))];
      draw();
    };
    const up = () => { svg.removeEventListener("pointermove", move); svg.removeEventListener("pointerup", up); draw(); };
    svg.addEventListener("pointermove", move);
    svg.addEventListener("pointerup", up);
  }

  function addAt([x, y]) {
    if (heads.length >= 2) return;
    const taken = heads.map((h) => h.side);
    const guess = x < state.columns / 2 ? "R" : "L"; // the usual display: the patient's right on the image's left
    const side = taken.includes(guess) ? (guess === "R" ? "L" : "R") : guess;
    heads.push({ side, circle: [x, y, defaultRadius()], stage: "absence", notes: [] });
    selected = heads.length - 1;
  }

  svg.addEventListener("click", (e) => {
    if (!adding) return;
    adding = false; svg.style.cursor = "";
    addAt(toImage(e)); draw();
  });
  document.getElementById("add").addEventListener("click", () => { adding = true; svg.style.cursor = "crosshair"; });
  document.querySelectorAll("[data-view]").forEach((b) => b.addEventListener("click", () => { view = b.dataset.view; draw(); }));

  async function confirm() {
    const saved = document.getElementById("saved");
    const response = await fetch("/api/v1/labels", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ sop_instance_uid: state.sop, view,
                             heads: heads.map((h) => ({ side: h.side, circle: h.circle, stage: h.stage, notes: h.notes })) }),
    });
    const body = await response.json();
    if (!response.ok) {
      saved.className = "bad";
      saved.textContent = `Not saved: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
      return;
    }
    saved.className = "ok";
    saved.textContent = `Saved (label ${body.id}): ${body.changes.length ? body.changes.join("; ") : "confirmed as read"}`;
  }
  const confirmButton = document.getElementById("confirm");
  if (confirmButton) confirmButton.addEventListener("click", confirm);

  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.key !== "Enter") return;
    const h = heads[selected];
    const step = e.shiftKey ? 10 : 2;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (e.key === "Enter" && confirmButton) confirm();
    else if (e.key === "Tab" && heads.length) selected = (selected + 1) % heads.length;
    else if (e.key in STAGE_KEYS && h) { h.stage = STAGE_KEYS[e.key]; clampNotes(h); }
    else if ((e.key === "r" || e.key === "l") && h) h.side = e.key.toUpperCase();
    else if (e.key === "a" || e.key === "f") view = e.key === "a" ? "AP" : "FL";
    else if (e.key in moves && h) h.circle = [h.circle[0] + moves[e.key][0], h.circle[1] + moves[e.key][1], h.circle[2]];
    else if ((e.key === "+" || e.key === "=") && h) h.circle[2] *= 1.03;
    else if (e.key === "-" && h) h.circle[2] = Math.max(4, h.circle[2] / 1.03);
    else if ((e.key === "Delete" || e.key === "Backspace") && h) { heads.splice(selected, 1); selected = heads.length ? 0 : -1; }
    else if (e.key === "n") { adding = true; svg.style.cursor = "crosshair"; return; }
    else return;
    e.preventDefault();
    draw();
  });
  draw();
})();
