#!/usr/bin/env node
// compile.mjs DIR [--auto-enable]: compile every DIR/*.wgsl with Dawn (Tint) and build a compute
// pipeline (layout 'auto') for each @compute entry point. Prints one line per module, the
// errors as FILE:LINE:COL: error: MESSAGE, and a closing summary line
//   dawn: N modules, M pipelines, K failures
// and exits 1 on any failure (2 on bad usage, no .wgsl files, or no adapter).
//
// --auto-enable: prepend `enable f16;` / `enable subgroups;` when the source uses f16 or
// subgroup builtins without enabling them (naga accepts subgroup builtins without the directive,
// Tint does not), so modules written for wgpu can be checked as they are.
import fs from 'node:fs';
import path from 'node:path';
import { backend, getAdapter, describeAdapter, getDevice, shutdown } from './dawn.mjs';

const args = process.argv.slice(2);
const autoEnable = args.includes('--auto-enable');
const dirs = args.filter((a) => !a.startsWith('--'));
if (dirs.length !== 1) {
  console.error('usage: node compile.mjs DIR [--auto-enable]   (env DAWN_BACKEND=vulkan|opengles|opengl)');
  shutdown(2);
}
const dir = dirs[0];
let files = [];
try {
  files = fs.readdirSync(dir).filter((f) => f.endsWith('.wgsl')).sort();
} catch (e) {
  console.error(`compile.mjs: ${e.message}`);
  shutdown(2);
}
if (files.length === 0) {
  console.error(`compile.mjs: no *.wgsl files in ${dir}`);
  shutdown(2);
}

// Remove // and (nested) /* */ comments, keeping newlines so that line numbers still match.
function stripComments(src) {
  let out = '';
  let depth = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i], n = src[i + 1];
    if (depth === 0 && c === '/' && n === '/') {
      while (i < src.length && src[i] !== '\n') i++;
      out += '\n';
    } else if (c === '/' && n === '*') { depth++; i++; }
    else if (depth > 0 && c === '*' && n === '/') { depth--; i++; }
    else if (depth > 0) { if (c === '\n') out += '\n'; }
    else out += c;
  }
  return out;
}

// `@compute` followed (through other attributes, possibly over several lines) by `fn NAME(`.
const ENTRY_RE = /@compute\b[^{};]*?\bfn\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(/g;
function computeEntryPoints(code) {
  return [...code.matchAll(ENTRY_RE)].map((m) => m[1]);
}

const SUBGROUP_RE = /\bsubgroup[A-Z][A-Za-z]*\s*\(|\bquad(Broadcast|Swap[XYD][a-z]*)\s*\(|\bsubgroup_(invocation_id|size)\b/;
function withEnables(code, features) {
  const pre = [];
  if (!/^\s*enable\s+[^;]*\bf16\b/m.test(code) && /\bf16\b|\bvec[234]h\b|\bmat[234]x[234]h\b|[0-9]h\b/.test(code)) {
    if (features.has('shader-f16')) pre.push('enable f16;');
  }
  if (!/^\s*enable\s+[^;]*\bsubgroups\b/m.test(code) && SUBGROUP_RE.test(code)) {
    if (features.has('subgroups')) pre.push('enable subgroups;');
  }
  // Kept on the first line so that Tint's line numbers still match the file.
  return pre.length ? { code: pre.join(' ') + ' ' + code, added: pre } : { code, added: [] };
}

let adapter0;
try {
  adapter0 = await getAdapter();
} catch (e) {
  console.error(String(e.message ?? e));
  shutdown(2);
}
describeAdapter(adapter0);

let modules = 0, pipelines = 0, failures = 0;
const t0 = performance.now();
for (const file of files) {
  const full = path.join(dir, file);
  const raw = fs.readFileSync(full, 'utf8');
  const { device, uncaptured } = await getDevice();
  const { code, added } = autoEnable ? withEnables(raw, device.features) : { code: raw, added: [] };
  const srcLines = code.split('\n');
  modules++;

  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code, label: file });
  const info = await module.getCompilationInfo();
  const scopeErr = await device.popErrorScope();
  let errs = 0;
  for (const m of info.messages) {
    const where = m.lineNum ? `${full}:${m.lineNum}:${m.linePos}` : full;
    console.log(`${where}: ${m.type}: ${m.message}`);
    if (m.type === 'error') {
      errs++;
      if (m.lineNum && srcLines[m.lineNum - 1] !== undefined) console.log(`    | ${srcLines[m.lineNum - 1].trim()}`);
    }
  }
  if (errs === 0 && scopeErr) {
    errs++;
    console.log(`${full}: error: ${scopeErr.message}`);
  }
  const note = added.length ? ` (auto: ${added.join(' ')})` : '';
  if (errs) {
    failures++;
    console.log(`FAIL ${file}: module does not compile${note}`);
    device.destroy();
    continue;
  }

  const entries = computeEntryPoints(stripComments(raw));
  const bad = [];
  for (const entryPoint of entries) {
    device.pushErrorScope('internal');
    device.pushErrorScope('validation');
    try {
      device.createComputePipeline({ label: `${file}:${entryPoint}`, layout: 'auto', compute: { module, entryPoint } });
    } catch (e) {
      bad.push([entryPoint, `exception: ${e.message ?? e}`]);
    }
    const v = await device.popErrorScope();
    const i = await device.popErrorScope();
    pipelines++;
    for (const [kind, err] of [['validation', v], ['internal', i]]) {
      if (err) bad.push([entryPoint, `${kind}: ${err.message}`]);
    }
  }
  for (const m of uncaptured) bad.push(['-', `uncaptured: ${m}`]);
  for (const [ep, msg] of bad) console.log(`${full}: entry point ${ep}: ${msg.trimEnd()}`);
  failures += bad.length;
  console.log(`${bad.length ? 'FAIL' : 'ok  '} ${file}: ${entries.length} compute entry point(s)` +
    (entries.length ? ` [${entries.join(', ')}]` : '') + note);
  device.destroy();
}

const secs = ((performance.now() - t0) / 1000).toFixed(2);
console.log(`dawn: backend ${backend}, ${secs}s`);
console.log(`dawn: ${modules} modules, ${pipelines} pipelines, ${failures} failures`);
shutdown(failures ? 1 : 0);
