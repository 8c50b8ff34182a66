// A public demo page: the visitor drags a box over an image and the models,
// running in a Web Worker on the visitor's machine, name what the crop shows.
const MAX_UPLOAD = 20 << 20;
const $ = (id) => document.getElementById(id);
const slug = decodeURIComponent(location.pathname.split('/').filter(Boolean)[1] || '');

// ---- the worker, behind promises ----
const worker = new Worker('/demo-app/worker.js', { type: 'module' });
const pending = new Map();
let nextId = 0;
worker.onmessage = (e) => {
  const { id, result, error } = e.data;
  const p = pending.get(id);
  pending.delete(id);
  if (error === undefined) p.resolve(result);
  else p.reject(new Error(error));
};
worker.onerror = (e) => {
  showError(`The demo could not start: ${e.message || 'the worker failed to load'}`);
  for (const p of pending.values()) p.reject(new Error('the worker failed'));
  pending.clear();
};
function call(type, args = {}, transfer = []) {
  return new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, type, ...args }, transfer);
  });
}

// ---- state ----
const state = {
  manifest: null,
  size: 0,
  image: null, // { index, label, object, target, verdict } or { upload: true }
  rect: [0, 0, 0, 0],
  busy: false,
  again: false,
  answered: 0,
  answer: null,
  firstAnswerMs: null,
  lastMs: null,
};

function showError(msg) {
  const el = $('demo-error');
  el.textContent = msg;
  el.hidden = false;
}
function status(msg) {
  $('demo-status').textContent = msg;
}
const sha = (path) => state.manifest.files.find((f) => f.path === path).sha256;
const fileUrl = (path) => `/api/v1/public/demos/${encodeURIComponent(slug)}/files/${sha(path)}`;

// ---- the crop box ----
const area = $('crop-area');
const box = $('crop-box');
const scale = () => area.clientWidth / state.size;

function place(el, [x0, y0, x1, y1]) {
  const s = 100 / state.size;
  Object.assign(el.style, { left: `${x0 * s}%`, top: `${y0 * s}%`, width: `${(x1 - x0) * s}%`, height: `${(y1 - y0) * s}%` });
}

function setRect(rect) {
  const n = state.size;
  let [x0, y0, x1, y1] = rect.map((v) => Math.round(v));
  x0 = Math.max(0, Math.min(x0, n - 1));
  y0 = Math.max(0, Math.min(y0, n - 1));
  x1 = Math.max(x0 + 1, Math.min(x1, n));
  y1 = Math.max(y0 + 1, Math.min(y1, n));
  if ([x0, y0, x1, y1].every((v, i) => v === state.rect[i])) return;
  state.rect = [x0, y0, x1, y1];
  place(box, state.rect);
  box.hidden = false;
  predict();
}

let drag = null;
area.addEventListener('pointerdown', (e) => {
  if (!state.image) return;
  e.preventDefault();
  try {
    area.setPointerCapture(e.pointerId);
  } catch {
    // Synthetic events have no pointer to capture; moves still arrive.
  }
  const r = area.getBoundingClientRect();
  const at = [(e.clientX - r.left) / scale(), (e.clientY - r.top) / scale()];
  const mode = e.target.id === 'crop-handle' ? 'resize' : e.target === box ? 'move' : 'draw';
  drag = { mode, at, rect: [...state.rect] };
  if (mode === 'draw') setRect([at[0], at[1], at[0] + 1, at[1] + 1]);
});
area.addEventListener('pointermove', (e) => {
  if (!drag) return;
  const r = area.getBoundingClientRect();
  const p = [(e.clientX - r.left) / scale(), (e.clientY - r.top) / scale()];
  const [dx, dy] = [p[0] - drag.at[0], p[1] - drag.at[1]];
  const [x0, y0, x1, y1] = drag.rect;
  const n = state.size;
  if (drag.mode === 'move') {
    const mx = Math.max(-x0, Math.min(dx, n - x1));
    const my = Math.max(-y0, Math.min(dy, n - y1));
    setRect([x0 + mx, y0 + my, x1 + mx, y1 + my]);
  } else if (drag.mode === 'resize') {
    setRect([x0, y0, x1 + dx, y1 + dy]);
  } else {
    setRect([Math.min(drag.at[0], p[0]), Math.min(drag.at[1], p[1]), Math.max(drag.at[0], p[0]), Math.max(drag.at[1], p[1])]);
  }
});
const stop = () => { drag = null; };
area.addEventListener('pointerup', stop);
area.addEventListener('pointercancel', stop);
// Arrow keys move the box; with Shift they resize it.
area.tabIndex = 0;
area.addEventListener('keydown', (e) => {
  const d = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
  if (!d || !state.image) return;
  e.preventDefault();
  const [x0, y0, x1, y1] = state.rect;
  if (e.shiftKey) setRect([x0, y0, x1 + d[0], y1 + d[1]]);
  else if (x0 + d[0] >= 0 && y0 + d[1] >= 0 && x1 + d[0] <= state.size && y1 + d[1] <= state.size) {
    setRect([x0 + d[0], y0 + d[1], x1 + d[0], y1 + d[1]]);
  }
});

// ---- answers ----
async function predict() {
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    do {
      state.again = false;
      const rect = [...state.rect];
      const { answer, ms } = await call('predict', { rect });
      if (state.firstAnswerMs === null) state.firstAnswerMs = performance.now();
      state.lastMs = ms;
      state.answered += 1;
      render(answer);
      $('demo-error').hidden = true;
      status(`Answered in ${ms.toFixed(1)} ms, on your machine.`);
    } while (state.again);
  } catch (err) {
    status(err.message);
  } finally {
    state.busy = false;
  }
}

function modelTitle(i) {
  const m = state.manifest;
  if (m.kind !== 'audit') return [m.models[i].name, 'its nearest public images vote'];
  const target = state.image && state.image.target;
  if (target === undefined || target === null) return [`Model ${m.models[i].name}`, `trained on set ${m.models[i].name}`];
  return i === target ? ['Target', 'trained on this image'] : ['Reference', 'never saw this image'];
}

function thumb(index) {
  const { thumb: t, columns } = state.manifest.public;
  const px = 40;
  const k = px / t;
  const el = document.createElement('span');
  el.className = 'thumb';
  el.title = state.manifest.class_names[state.manifest.public.labels[index]];
  Object.assign(el.style, {
    backgroundImage: `url(${fileUrl(state.manifest.public.sprite)})`,
    backgroundSize: `${columns * t * k}px auto`,
    backgroundPosition: `-${(index % columns) * px}px -${Math.floor(index / columns) * px}px`,
  });
  return el;
}

function render(answer) {
  state.answer = answer;
  const host = $('answers');
  host.replaceChildren();
  host.dataset.answered = String(state.answered);
  const truth = state.image && !state.image.upload ? state.image.label : null;
  answer.models.forEach((a, i) => {
    const card = document.createElement('div');
    card.className = 'answer';
    card.id = `answer-${i}`;
    card.dataset.top = a.top.length ? a.top[0].name : '';
    card.dataset.share = a.top.length ? String(a.top[0].share) : '0';
    const [name, who] = modelTitle(i);
    const h = document.createElement('h3');
    h.textContent = `${name} `;
    const w = document.createElement('span');
    w.className = 'who';
    w.textContent = who;
    h.append(w);
    card.append(h);
    for (const t of a.top) {
      const row = document.createElement('div');
      row.className = 'label-row' + (revealed && t.label === truth ? ' truth' : '');
      const n = document.createElement('span');
      n.className = 'name';
      n.textContent = t.name;
      const bar = document.createElement('span');
      bar.className = 'share';
      const fill = document.createElement('span');
      fill.style.width = `${(t.share * 100).toFixed(1)}%`;
      bar.append(fill);
      const pct = document.createElement('span');
      pct.textContent = `${Math.round(t.share * 100)} %`;
      row.append(n, bar, pct);
      card.append(row);
    }
    const near = document.createElement('div');
    near.className = 'neighbours';
    near.setAttribute('aria-label', 'nearest public images');
    for (const j of a.neighbours) near.append(thumb(j));
    card.append(near);
    host.append(card);
  });
}

// ---- images ----
let revealed = false;
function reveal(on) {
  revealed = on;
  const img = state.image;
  const known = img && !img.upload;
  $('reveal').disabled = !known;
  $('truth').hidden = !(on && known);
  $('object-box').hidden = !(on && known && img.object);
  if (on && known) {
    $('truth').textContent = `The object: ${state.manifest.class_names[img.label]}.`;
    if (img.object) place($('object-box'), img.object);
  }
}
$('reveal').addEventListener('click', () => {
  reveal(!revealed);
  predict();
});

function draw(rgba) {
  const c = $('demo-canvas');
  c.width = c.height = state.size;
  c.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, rgba.byteLength), state.size, state.size), 0, 0);
}

async function pick(index) {
  const img = state.manifest.images[index];
  document.querySelectorAll('#gallery button').forEach((b, i) => b.setAttribute('aria-pressed', String(i === index)));
  const { rgba } = await call('bundleImage', { path: img.file });
  state.image = { index, ...img };
  draw(rgba);
  reveal(false);
  $('verdict').textContent = img.verdict ? `The audit's verdict for this image: ${img.verdict}.` : '';
  state.rect = [0, 0, 0, 0];
  setRect(img.crop);
}

$('upload').addEventListener('change', async (e) => {
  const f = e.target.files[0];
  e.target.value = '';
  if (!f) return;
  if (f.size > MAX_UPLOAD) {
    showError(`${f.name} is ${(f.size / 1048576).toFixed(1)} MB; images up to ${MAX_UPLOAD >> 20} MB are taken.`);
    return;
  }
  try {
    const { rgba } = await call('upload', { file: await f.arrayBuffer() });
    $('demo-error').hidden = true;
    document.querySelectorAll('#gallery button').forEach((b) => b.setAttribute('aria-pressed', 'false'));
    state.image = { upload: true, name: f.name };
    draw(rgba);
    reveal(false);
    $('verdict').textContent = `Your image, ${f.name}: its neighbours among the public images.`;
    state.rect = [0, 0, 0, 0];
    setRect([0, 0, state.size, state.size]);
  } catch (err) {
    showError(`${f.name}: ${err.message}`);
  }
});

function explain(m) {
  const p = $('demo-explain');
  if (m.kind === 'audit') {
    p.textContent =
      'Two models learned from images without labels: the target trained on the image you pick, the reference never saw it. ' +
      'Drag the yellow box over the background so that the object is hidden; each model embeds the crop and its nearest public images vote on the object. ' +
      'When the target names the hidden object and the reference cannot, the target has memorized this image (the déjà vu test).';
    const audit = /^audit (au[0-9a-f]+)$/.exec(m.source);
    if (audit) {
      const a = document.createElement('a');
      a.id = 'report-link';
      a.href = `/audits/${audit[1]}`;
      a.textContent = "The audit's report";
      p.append(' ', a, ' (for its team).');
    }
  } else {
    p.textContent =
      'This model learned from images without labels. ' +
      'Drag the yellow box over part of an image: the model embeds the crop in your browser and its nearest public images vote on what it shows. ' +
      'Upload an image of your own to see which public images it is closest to.';
  }
}

async function start() {
  try {
    const { manifest } = await call('load', { slug });
    state.manifest = manifest;
    state.size = manifest.input_size;
    document.title = `${manifest.title || 'sslab demo'} · sslab`;
    $('demo-title').textContent = manifest.title || 'sslab demo';
    explain(manifest);
    const gallery = $('gallery');
    manifest.images.forEach((img, i) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.setAttribute('aria-pressed', 'false');
      b.title = img.verdict ? `${img.verdict}` : manifest.class_names[img.label];
      const el = document.createElement('img');
      el.src = fileUrl(img.file);
      el.alt = `image ${i + 1}`;
      b.append(el);
      if (img.verdict) {
        const tag = document.createElement('span');
        tag.className = 'tag';
        tag.textContent = img.verdict;
        b.append(tag);
      }
      b.addEventListener('click', () => pick(i).catch((err) => showError(err.message)));
      gallery.append(b);
    });
    status('Ready: drag the yellow box.');
    if (manifest.images.length) await pick(0);
  } catch (err) {
    $('demo-title').textContent = 'The demo could not start';
    status('');
    showError(err.message);
  }
}

// For tests and benchmarks: the worker and the page's state.
window.sslabDemo = { call, state, setRect, ready: start() };
