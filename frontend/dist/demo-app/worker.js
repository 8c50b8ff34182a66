// The demo's models run here, off the page's thread: the bundle is fetched,
// checked file by file against its manifest, and every crop is answered by
// the engine's own code compiled to WebAssembly.
import init, { DemoBundle } from '/wasm-infer/sslab_wasm_infer.js';

// A module whose one function uses a SIMD instruction: it validates only
// where WebAssembly SIMD is supported, which the inference module needs.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

let bundle = null;
let base = '';

async function bytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: the server answered ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

const fileUrl = (path) => `${base}/files/${bundle.sha256(path)}`;

function rgba() {
  const px = bundle.image_rgba();
  return { result: { rgba: px }, transfer: [px.buffer] };
}

const handlers = {
  async load({ slug }) {
    if (!WebAssembly.validate(SIMD_PROBE)) {
      throw new Error('This browser cannot run WebAssembly SIMD, which the demo needs; a current Chrome, Edge, Firefox or Safari can.');
    }
    await init();
    base = `/api/v1/public/demos/${encodeURIComponent(slug)}`;
    const r = await fetch(base);
    if (!r.ok) throw new Error(r.status === 404 ? 'No demo is published at this address.' : `the server answered ${r.status}`);
    const text = await r.text();
    bundle = new DemoBundle(text);
    for (const path of bundle.needed()) {
      bundle.add_file(path, await bytes(fileUrl(path)));
    }
    bundle.open();
    return { result: { manifest: JSON.parse(text) } };
  },
  async bundleImage({ path }) {
    bundle.set_bundle_image(path, await bytes(fileUrl(path)));
    return rgba();
  },
  async upload({ file }) {
    bundle.set_image(new Uint8Array(file));
    return rgba();
  },
  async predict({ rect }) {
    const t0 = performance.now();
    const answer = JSON.parse(bundle.predict(...rect));
    return { result: { answer, ms: performance.now() - t0 } };
  },
  async embed({ rect }) {
    const t0 = performance.now();
    const embedding = Array.from(bundle.embed(...rect));
    return { result: { embedding, ms: performance.now() - t0 } };
  },
};

self.onmessage = async (e) => {
  const { id, type, ...args } = e.data;
  try {
    const { result, transfer = [] } = await handlers[type](args);
    self.postMessage({ id, result }, transfer);
  } catch (err) {
    self.postMessage({ id, error: String((err && err.message) || err) });
  }
};
