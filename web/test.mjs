// The headless-Chromium test: serves this folder on loopback, loads index.html in Debian's
// Chromium with WebGPU on, waits for the wasm module's checks and prints their report. Exits
// non-zero when a check fails, the page throws, or no WebGPU adapter is offered.
//
//   node web/test.mjs [--chromium /usr/bin/chromium] [--timeout-s 300]
import { createServer } from "node:http";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { extname, join, normalize, dirname } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const root = dirname(fileURLToPath(import.meta.url));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const chromium = arg("--chromium", "/usr/bin/chromium");
const timeoutMs = Number(arg("--timeout-s", "300")) * 1000;

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  try {
    const body = await readFile(join(root, path === "/" ? "index.html" : path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${server.address().port}/index.html`;

const profile = await mkdtemp(join(tmpdir(), "softmax-ce-chromium-"));
const browser = await puppeteer.launch({
  executablePath: chromium,
  userDataDir: profile,
  headless: true,
  args: [
    "--headless=new",
    "--enable-unsafe-webgpu",
    // SwiftShader's Vulkan: the only adapter headless Chromium offers without a GPU.
    "--enable-features=Vulkan",
    "--use-angle=swiftshader",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
  ],
});
let failed = true;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`page ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console.log(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.checks !== undefined, { timeout: timeoutMs });
  const { state, text } = await page.evaluate(() => window.checks);
  console.log(text);
  console.log(`== browser checks ${state} (${await browser.version()})`);
  failed = state !== "passed";
} finally {
  await browser.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
