#!/usr/bin/env node
// numerics.mjs DIR: runs kernels of the modules `softmax-ce wgsl --emit DIR --target web` wrote
// (the library's own sources, never a copy) on Dawn, against answers computed here in float64:
//   softmax_fused (softmax and log-softmax), cross_entropy_fused (loss and gradient, with an
//   ignored row and label smoothing), matmul_nn and matmul_tn (with alpha and beta).
// Rows are adversarial: a +-1e4 entry, a -inf entry, a constant row, an ignored row holding
// NaN; widths 37 and 1001 (scalar modules, w1) and 1000 (vec4 modules, w4).
//
// Every configuration in DIR whose subgroup size the adapter allows is run (SG at most the
// adapter's smallest subgroup size, as the library picks it); the others, the f16 modules and
// every other kernel are compiled by compile.mjs only, and this script says so.
//
// Prints one line per run and `ok`, and exits 0; or the mismatches, `FAIL`, and exits 1
// (2 on bad usage or no adapter).
import fs from 'node:fs';
import path from 'node:path';
import { getAdapter, describeAdapter, getDevice, shutdown } from './dawn.mjs';

const dir = process.argv[2];
if (!dir || process.argv.length !== 3) {
  console.error('usage: node numerics.mjs DIR   (DIR from softmax-ce wgsl --emit DIR --target web)');
  shutdown(2);
}
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.wgsl'));

// --- the uniform blocks, mirrored from the library -------------------------------------------
// RowParams: src/gpu/params.rs (`struct RowParams`, #[repr(C)], 128 bytes), mirrored by
// `struct RowParams` in shaders/common.wgsl; a naga test in src/gpu/shaders.rs holds those two
// together field by field, and `checkStruct` below holds this script to the emitted WGSL.
//   words 0..8   rows, cols, tpr, vec_base, ignore, ignores, nan (f32), pad
//   words 8..16  the family's Args (FusedArgs in params.rs, `struct Args` in fused.wgsl):
//                log, upstream, scale (f32), smoothing (f32), z_loss (f32), weight_sum (f32), pad0, pad1
//   words 16..24 base[k]: where matrix binding k's window starts, in vectors of W elements
//   words 24..32 stride[k]: matrix binding k's row stride, in vectors
const ROW_PARAMS = ['rows', 'cols', 'tpr', 'vec_base', 'ignore', 'ignores', 'nan', 'pad', 'a', 'base', 'stride'];
const FUSED_ARGS = ['log', 'upstream', 'scale', 'smoothing', 'z_loss', 'weight_sum', 'pad0', 'pad1'];
function rowParams({ rows, cols, tpr, w, ignore = null, args = {}, matrices }) {
  const buf = new ArrayBuffer(128);
  const u = new Uint32Array(buf), f = new Float32Array(buf);
  u[0] = rows; u[1] = cols; u[2] = tpr; u[3] = 0;
  u[4] = ignore ?? 0; u[5] = ignore === null ? 0 : 1; f[6] = NaN;
  u[8] = args.log ?? 0; u[9] = args.upstream ?? 0; f[10] = args.scale ?? 0;
  f[11] = args.smoothing ?? 0; f[12] = args.z_loss ?? 0; f[13] = args.weight_sum ?? 0;
  for (let k = 0; k < matrices; k++) { u[16 + k] = 0; u[24 + k] = cols / w; }
  return buf;
}
// MatmulParams: src/gpu/params.rs (48 bytes), `struct MatmulParams` in shaders/matmul_common.wgsl:
//   m, n, k, a_base, b_base, c_base, alpha (f32), beta (f32), tile_x0, pad0..pad2
const MATMUL_PARAMS = ['m', 'n', 'k', 'a_base', 'b_base', 'c_base', 'alpha', 'beta', 'tile_x0', 'pad0', 'pad1', 'pad2'];
function matmulParams({ m, n, k, alpha, beta }) {
  const buf = new ArrayBuffer(48);
  const u = new Uint32Array(buf), f = new Float32Array(buf);
  u[0] = m; u[1] = n; u[2] = k; f[6] = alpha; f[7] = beta;
  return buf;
}
// Constants the kernels and the host share (src/gpu/shaders.rs): the matmul tile is
// MM_BLOCK * MM_TX columns by MM_BLOCK * MM_TY rows; the z-loss denominator sits at DEN_Z.
const MM_TILE = 64;
const DEN_Z = 64;

// The member names of WGSL struct `name` in `src`, in order.
function members(src, name) {
  const m = src.match(new RegExp(`struct ${name} \\{([^}]*)\\}`));
  if (!m) throw new Error(`no struct ${name}`);
  return m[1].split('\n').map((l) => l.replace(/\/\/.*/, '').trim()).filter(Boolean).map((l) => l.split(':')[0].trim());
}
function checkStruct(src, name, want, file) {
  const got = members(src, name);
  if (got.join() !== want.join()) throw new Error(`${file}: struct ${name} is {${got}}, this script writes {${want}}`);
}

// --- data --------------------------------------------------------------------------------------
let seed = 0x5eed;
function rand() { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());

// Five rows of `cols`: random; with +1e4 and -1e4; with -inf; constant; of magnitude 50.
function adversarialRows(cols) {
  const rows = [];
  for (let r = 0; r < 5; r++) {
    const row = Array.from({ length: cols }, () => normal() * (r === 4 ? 50 : 3));
    if (r === 1) { row[cols >> 1] = 1e4; row[0] = -1e4; }
    if (r === 2) row[cols - 1] = -Infinity;
    if (r === 3) row.fill(7.25);
    rows.push(row.map(Math.fround));
  }
  return rows;
}

// --- float64 references ----------------------------------------------------------------------
function lse(row) {
  const m = Math.max(...row);
  return m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
}
const softmaxRef = (row) => { const l = lse(row); return row.map((v) => Math.exp(v - l)); };
const logSoftmaxRef = (row) => { const l = lse(row); return row.map((v) => v - l); };
// cpu::cross_entropy / cross_entropy_grad with unit class weights, a mean over the rows not
// ignored (denominator d), smoothing e: loss (1 - e)(lse - x_y) + e/C sum_j (lse - x_j), over d;
// gradient (p_j - (1 - e)[j = y] - e/C) / d; an ignored row gets 0 and a zero gradient.
function crossEntropyRef(rows, labels, e, d) {
  const loss = [], grad = [];
  rows.forEach((row, i) => {
    const C = row.length, y = labels[i];
    if (y === null) { loss.push(0); grad.push(row.map(() => 0)); return; }
    const l = lse(row);
    const smooth = e > 0 ? (e / C) * row.reduce((s, v) => s + (l - v), 0) : 0;
    loss.push(((1 - e) * (l - row[y]) + smooth) / d);
    grad.push(row.map((v, j) => (Math.exp(v - l) - (1 - e) * (j === y ? 1 : 0) - e / C) / d));
  });
  return { loss, grad };
}
function matmulRef(a, b, c, { m, n, k, alpha, beta, transposed }) {
  const out = new Float64Array(m * n), bound = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let s = 0, abs = 0;
    for (let t = 0; t < k; t++) {
      const av = transposed ? a[t * m + i] : a[i * k + t];
      s += av * b[t * n + j]; abs += Math.abs(av * b[t * n + j]);
    }
    out[i * n + j] = alpha * s + (beta !== 0 ? beta * c[i * n + j] : 0);
    // f32 accumulation over k terms: a few ulps of the sum of magnitudes.
    const cTerm = beta !== 0 ? Math.abs(beta * c[i * n + j]) : 0;
    bound[i * n + j] = 4 * 2 ** -24 * (Math.abs(alpha) * abs * Math.sqrt(k) + cTerm) + 1e-30;
  }
  return { out, bound };
}

// --- Dawn ----------------------------------------------------------------------------------
const adapter = await getAdapter().catch((e) => { console.error(e.message); shutdown(2); });
describeAdapter(adapter);
const sgMin = adapter.info.subgroupMinSize ?? 0;
const { device, uncaptured } = await getDevice();
const hasSubgroups = device.features.has('subgroups');

const modules = new Map();
function pipeline(file, entryPoint) {
  const key = `${file}:${entryPoint}`;
  if (!modules.has(key)) {
    const code = fs.readFileSync(path.join(dir, file), 'utf8');
    const module = device.createShaderModule({ code, label: file });
    modules.set(key, { code, pipeline: device.createComputePipeline({ label: key, layout: 'auto', compute: { module, entryPoint } }) });
  }
  return modules.get(key);
}
function storage(data, usage = 0) {
  const bytes = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
  const b = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | usage });
  device.queue.writeBuffer(b, 0, data);
  return b;
}
function uniform(bytes) {
  const b = device.createBuffer({ size: bytes.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(b, 0, bytes);
  return b;
}
// Runs `p` over `groups` workgroups with `buffers` at bindings 0, 1, ...; returns the f32
// contents of the buffers at `read` (binding numbers).
async function dispatch(p, buffers, groups, read) {
  device.pushErrorScope('validation');
  const bind = device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })).filter((e) => e.resource.buffer),
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(p);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(...groups);
  pass.end();
  const staging = read.map((i) => {
    const s = device.createBuffer({ size: buffers[i].size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    enc.copyBufferToBuffer(buffers[i], 0, s, 0, buffers[i].size);
    return s;
  });
  device.queue.submit([enc.finish()]);
  const err = await device.popErrorScope();
  if (err) throw new Error(`validation: ${err.message}`);
  return Promise.all(staging.map(async (s) => {
    await s.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(s.getMappedRange().slice(0));
    s.unmap();
    return out;
  }));
}

// --- comparisons -------------------------------------------------------------------------------
let failures = 0;
function compare(what, got, want, tol) {
  let bad = 0, worst = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    const same = g === w || (Number.isNaN(g) && Number.isNaN(w));
    const err = same ? 0 : Math.abs(g - w);
    const allowed = tol(w, i);
    if (!(err <= allowed)) {
      if (bad < 5) console.log(`  mismatch ${what} [${i}]: got ${g}, want ${w}`);
      bad++;
    } else if (Number.isFinite(w)) worst = Math.max(worst, err / Math.max(allowed, 1e-300));
  }
  if (bad) failures++;
  return { bad, worst };
}
const rel = (r, a = 0) => (w) => (Number.isFinite(w) ? a + r * Math.abs(w) : 0);

// --- the runs ---------------------------------------------------------------------------------
// A configuration's tag from a file name (`{family}-w{W}-{dtype}-{tag}.wgsl`).
const parse = (f) => {
  const m = f.match(/^([a-z_]+)-w([14])-(f32|f16)-(wg(\d+)-fwg(\d+)-rc(\d+)-sg(\d+)-(tex|buf))\.wgsl$/);
  return m && { family: m[1], w: +m[2], dtype: m[3], tag: m[4], wg: +m[5], fwg: +m[6], rc: +m[7], sg: +m[8] };
};
const parsed = files.map(parse);
if (parsed.some((p) => !p)) { console.error(`numerics.mjs: unexpected file names in ${dir}`); shutdown(2); }
const configs = [...new Map(parsed.map((p) => [p.tag, p])).values()].sort((a, b) => a.tag.localeCompare(b.tag));
const runnable = configs.filter((c) => c.sg === 1 || (hasSubgroups && c.sg <= sgMin));
for (const c of configs.filter((c) => !runnable.includes(c))) {
  console.log(`skip ${c.tag}: subgroups of ${c.sg}, more than this adapter's smallest (${sgMin}): ` +
    'the library never picks it here (compiled by compile.mjs only)');
}
if (runnable.length === 0) { console.log('FAIL: no configuration runs on this adapter'); shutdown(1); }
const f16 = files.filter((f) => f.includes('-f16-')).length;
console.log(`skip f16: the ${f16} f16 modules are compiled by compile.mjs only`);
console.log('skip other kernels: only softmax_fused, cross_entropy_fused, matmul_nn and matmul_tn run here; ' +
  'every other entry point (the texture kernels included) is compiled by compile.mjs only');

const file = (family, w, tag) => {
  const f = `${family}-w${w}-f32-${tag}.wgsl`;
  if (!files.includes(f)) throw new Error(`${dir} has no ${f}`);
  return f;
};
const IGNORE_WORD = (-100) >>> 0; // labels written as i32 with PyTorch's ignore_index -100
let runs = 0;
for (const c of runnable) {
  for (const cols of [37, 1001, 1000]) {
    const w = cols % 4 === 0 ? 4 : 1;
    const rows = adversarialRows(cols);
    const n = rows.length;
    const x = storage(new Float32Array(rows.flat()));
    // The host's team size (threads_per_row in src/gpu/dispatch.rs: the row's vectors over
    // the row cache, to a power of two, at most the workgroup), and a whole workgroup per row,
    // whose reductions cross subgroups and whose threads each hold fewer vectors.
    const vectors = cols / w;
    const hostTpr = Math.min(2 ** Math.ceil(Math.log2(Math.max(1, Math.ceil(vectors / c.rc)))), c.fwg);
    for (const tpr of [...new Set([hostTpr, c.fwg])]) {
      const groups = [Math.ceil(n / (c.fwg / tpr)), 1, 1];
      const fused = file('fused', w, c.tag);
      // softmax_fused: bindings 0 params, 1 x, 2 out.
      for (const log of [0, 1]) {
        const { code, pipeline: p } = pipeline(fused, 'softmax_fused');
        checkStruct(code, 'RowParams', ROW_PARAMS, fused);
        checkStruct(code, 'Args', FUSED_ARGS, fused);
        const params = uniform(rowParams({ rows: n, cols, tpr, w, args: { log }, matrices: 2 }));
        const out = storage(new Float32Array(n * cols));
        const [got] = await dispatch(p, [params, x, out], groups, [2]);
        const want = rows.flatMap(log ? logSoftmaxRef : softmaxRef);
        const r = compare(`${fused} softmax_fused log=${log} tpr=${tpr}`, got, want, rel(2e-5, 2e-7));
        runs++;
        console.log(`${r.bad ? 'FAIL' : 'ok  '} ${fused} ${log ? 'log_softmax' : 'softmax'}_fused ${n}x${cols} tpr=${tpr}`);
      }
      // cross_entropy_fused: 0 params, 1 x, 2 y, 3 loss_out, 4 g, 5 w, 6 up, 7 den.
      for (const smoothing of [0, 0.1]) {
        const { pipeline: p } = pipeline(fused, 'cross_entropy_fused');
        // Row 3 is ignored and holds a NaN, which must reach no output. With smoothing, a -inf
        // logit makes the loss infinite (as in PyTorch): the smoothing run replaces it.
        const xs = rows.map((r, i) => (i === 3 ? r.map((v, j) => (j === 1 ? NaN : v)) : r))
          .map((r) => (smoothing ? r.map((v) => (v === -Infinity ? -30 : v)) : r));
        const labels = [3, cols >> 1, 5, null, cols - 2];
        const d = labels.filter((y) => y !== null).length;
        const den = new Float32Array(DEN_Z + 4); den[0] = d; den[DEN_Z] = d;
        const params = uniform(rowParams({
          rows: n, cols, tpr, w, ignore: IGNORE_WORD, matrices: 2,
          args: { smoothing, weight_sum: cols },
        }));
        const bufs = [
          params,
          storage(new Float32Array(xs.flat())),
          storage(new Uint32Array(labels.map((y) => (y === null ? IGNORE_WORD : y)))),
          storage(new Float32Array(n)),
          storage(new Float32Array(n * cols)),
          storage(new Float32Array(cols).fill(1)),
          storage(new Float32Array(n).fill(1)),
          storage(den),
        ];
        const [loss, grad] = await dispatch(p, bufs, groups, [3, 4]);
        const want = crossEntropyRef(xs, labels, smoothing, d);
        const what = `${fused} cross_entropy_fused smoothing=${smoothing} tpr=${tpr}`;
        const rl = compare(`${what} loss`, loss, want.loss, rel(2e-5, 1e-6));
        const rg = compare(`${what} grad`, grad, want.grad.flat(), rel(2e-5, 1e-7));
        runs++;
        console.log(`${rl.bad + rg.bad ? 'FAIL' : 'ok  '} ${what} ${n}x${cols} (loss and gradient, row 3 ignored)`);
      }
    }
  }

  // matmul_nn: C = alpha A B + beta C; matmul_tn: C = alpha A^T B + beta C. Bindings 0 params,
  // 1 a, 2 b, 3 c. beta = 0 must not read C, which holds NaN then.
  for (const [m, n, k] of [[37, 45, 1001], [64, 68, 100]]) {
    for (const [entry, alpha, beta] of [['matmul_nn', 1, 0], ['matmul_tn', -0.5, 1.5]]) {
      const transposed = entry === 'matmul_tn';
      const aRow = transposed ? m : k;
      const w = k > 0 && aRow % 4 === 0 && n % 4 === 0 ? 4 : 1; // src/gpu/matmul.rs
      const mm = file('matmul', w, c.tag);
      const { code, pipeline: p } = pipeline(mm, entry);
      checkStruct(code, 'MatmulParams', MATMUL_PARAMS, mm);
      const a = Float32Array.from({ length: m * k }, normal);
      const b = Float32Array.from({ length: k * n }, normal);
      const c0 = Float32Array.from({ length: m * n }, () => (beta === 0 ? NaN : normal()));
      const bufs = [uniform(matmulParams({ m, n, k, alpha, beta })), storage(a), storage(b), storage(c0)];
      const [got] = await dispatch(p, bufs, [Math.ceil(n / MM_TILE), Math.ceil(m / MM_TILE), 1], [3]);
      const { out, bound } = matmulRef(a, b, c0, { m, n, k, alpha, beta, transposed });
      const r = compare(`${mm} ${entry}`, got, out, (_, i) => bound[i]);
      runs++;
      console.log(`${r.bad ? 'FAIL' : 'ok  '} ${mm} ${entry} ${m}x${k} by ${k}x${n} alpha=${alpha} beta=${beta}`);
    }
  }
}
for (const m of uncaptured) { failures++; console.log(`uncaptured error: ${m}`); }
device.destroy();
console.log(`dawn numerics: ${runs} runs over ${runnable.length} of ${configs.length} configurations, ${failures} failures`);
console.log(failures ? 'FAIL' : 'ok');
shutdown(failures ? 1 : 0);
