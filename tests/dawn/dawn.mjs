// dawn.mjs: shared setup for compile.mjs and numerics.mjs: picks the backend, points the Vulkan
// loader at the unpacked Mesa 25 lavapipe (.mesa25/lvp_icd.json) unless the caller already chose
// a driver, requests a device with shader-f16/subgroups (when offered) and the adapter's limits.
//
// Backend: DAWN_BACKEND=vulkan (default) | opengles | opengl. The GL backends only expose
// compatibility-mode adapters (no shader-f16, no subgroups) and need EGL_PLATFORM=surfaceless
// on a machine without a display; both are set here.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const backend = process.env.DAWN_BACKEND || 'vulkan';
const isGL = backend === 'opengles' || backend === 'opengl';

// Environment must be in place before dawn.node creates its instance: the Vulkan loader and
// libEGL read it with getenv() at that point, and process.env assignments do reach getenv().
if (backend === 'vulkan' && !process.env.VK_ICD_FILENAMES && !process.env.VK_DRIVER_FILES) {
  const icd = path.join(here, '.mesa25', 'lvp_icd.json');
  if (fs.existsSync(icd)) {
    process.env.VK_ICD_FILENAMES = icd; // loader 1.3.239 (bookworm) honours both names
    process.env.VK_DRIVER_FILES = icd;
  }
}
// The system's Mesa 22.3 device-select implicit layer is loaded by the loader whatever ICD is
// chosen; it only prints "XDG_RUNTIME_DIR is invalid" noise here. Skip it.
if (process.env.NODEVICE_SELECT === undefined) process.env.NODEVICE_SELECT = '1';
if (isGL && !process.env.EGL_PLATFORM) process.env.EGL_PLATFORM = 'surfaceless';

const { create, globals } = await import('webgpu');
Object.assign(globalThis, globals);

export const KEY_LIMITS = [
  'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ', 'maxComputeWorkgroupsPerDimension', 'maxComputeWorkgroupStorageSize',
  'maxStorageBufferBindingSize', 'maxUniformBufferBindingSize', 'maxBufferSize',
  'maxStorageBuffersPerShaderStage', 'maxStorageTexturesPerShaderStage', 'maxBindGroups',
  'maxBindingsPerBindGroup', 'maxSampledTexturesPerShaderStage', 'maxTextureDimension2D',
];

// All limit names of a GPUSupportedLimits (dawn.node defines them as prototype getters).
export function limitNames(limits) {
  const names = new Set();
  for (let o = limits; o && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const k of Object.getOwnPropertyNames(o)) {
      if (k !== 'constructor' && typeof limits[k] === 'number') names.add(k);
    }
  }
  return [...names].sort();
}

let gpu = null;
let adapter = null;

// A fresh adapter each call: WebGPU adapters are consumed by requestDevice().
export async function getAdapter() {
  gpu ??= create([`backend=${backend}`]);
  adapter = await gpu.requestAdapter(isGL ? { featureLevel: 'compatibility' } : {});
  if (!adapter) {
    throw new Error(`dawn: no ${backend} adapter` +
      (backend === 'vulkan' ? ` (VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES ?? ''}; ` +
        'Dawn rejects Mesa 22.3 lavapipe, run setup.sh for the Mesa 25 one)' : ''));
  }
  return adapter;
}

export function describeAdapter(a, out = console.log) {
  const i = a.info;
  out(`dawn: backend=${backend} vendor=${JSON.stringify(i.vendor)} architecture=${JSON.stringify(i.architecture)} ` +
    `device=${JSON.stringify(i.device)} description=${JSON.stringify(i.description)}` +
    (i.subgroupMinSize !== undefined ? ` subgroupMinSize=${i.subgroupMinSize} subgroupMaxSize=${i.subgroupMaxSize}` : '') +
    (a.featureLevel ? ` featureLevel=${a.featureLevel}` : ''));
  out(`dawn: features: ${[...a.features].sort().join(' ')}`);
  out(`dawn: limits: ${KEY_LIMITS.map((k) => `${k}=${a.limits[k]}`).join(' ')}`);
  if (backend === 'vulkan') out(`dawn: VK_ICD_FILENAMES=${process.env.VK_ICD_FILENAMES ?? ''}`);
}

export const WANTED_FEATURES = ['shader-f16', 'subgroups'];

export async function getDevice() {
  const a = await getAdapter();
  const requiredFeatures = WANTED_FEATURES.filter((f) => a.features.has(f));
  const requiredLimits = {};
  for (const k of limitNames(a.limits)) requiredLimits[k] = a.limits[k];
  const device = await a.requestDevice({ requiredFeatures, requiredLimits });
  const uncaptured = [];
  device.onuncapturederror = (ev) => uncaptured.push(ev.error?.message ?? String(ev.error));
  return { device, uncaptured };
}

// dawn.node keeps the process alive while the instance exists (crbug.com/387965810); callers
// end with process.exit(). Dropping our references first is just tidiness.
export function shutdown(code) {
  adapter = null;
  gpu = null;
  process.exit(code);
}
