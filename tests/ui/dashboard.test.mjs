// The dashboard in a real browser: headless Chromium (Debian package) driven by
// playwright-core, against the real gpu-backend binary serving only the control plane
// (--no-models) on SQLite in a fresh data directory.
//
//   tests/ui/run.sh              installs what is missing, then runs this file
//
// Environment: SWITCHYARD_GPU_BACKEND (binary, default target/release/gpu-backend),
// CHROMIUM (default /usr/bin/chromium), UI_TEST_OUTPUT (screenshots, default tests/ui/output).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const binary = process.env.SWITCHYARD_GPU_BACKEND || join(repo, "target/release/gpu-backend");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const outputDir = process.env.UI_TEST_OUTPUT || join(here, "output");

const adminKey = "sk-sy-admin-" + randomBytes(16).toString("hex");
const edgeToken = "edge-" + randomBytes(16).toString("hex");
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

let server, base, dataDir, browser, page;
let serverLog = "";

function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

async function waitForServer(url, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) throw new Error(`gpu-backend exited (${server.exitCode}):\n${serverLog}`);
    try {
      if ((await fetch(url)).ok) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gpu-backend did not answer ${url} in time:\n${serverLog}`);
}

async function edge(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${edgeToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(response.status, 200, `${method} ${path}: ${await response.clone().text()}`);
  return response.json();
}

/**
 * Gateway traffic for `keyId`: today a usage record posted the way an edge ships it
 * (POST /edge/v1/usage). Once an edge host syncs keys from the control plane, this becomes
 * a real request through it with `secret`. Returns the request id the ledger will show.
 */
async function sendTraffic(keyId, secret) {
  assert.ok(secret.startsWith("sk-sy-"));
  const requestId = "ui-" + randomBytes(6).toString("hex");
  const shipped = await edge("POST", "/edge/v1/usage", {
    records: [{
      request_id: requestId, timestamp_ms: Date.now(), key_id: keyId, team: null,
      model: "chat", provider: "openai", deployment: "openai/gpt-4o-mini",
      input_tokens: 1200, cached_input_tokens: 200, output_tokens: 300, cost: 0.0123,
      price: { input: 0.15, cached_input: 0.075, output: 0.6 }, status: 200, attempts: 2,
      stream: true, latency_ms: 840, ttft_ms: 210,
    }],
  });
  assert.deepEqual(shipped, { accepted: 1, duplicates: 0 });
  return requestId;
}

before(async () => {
  mkdirSync(outputDir, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), "switchyard-ui-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(binary, [
    "--no-models", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir,
    "--edge-token-sha256", sha256(edgeToken),
  ], { env: { ...process.env, SWITCHYARD_ADMIN_KEY: adminKey, SWITCHYARD_DATABASE_URL: "" } });
  server.on("error", (error) => { serverLog += `could not start ${binary}: ${error.message}\n`; });
  server.stdout.on("data", (d) => { serverLog += d; });
  server.stderr.on("data", (d) => { serverLog += d; });
  await waitForServer(base + "/dashboard", 30_000);
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
  page.on("dialog", (dialog) => dialog.accept(dialog.type() === "prompt" ? "0" : undefined));
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("log in, create a key, see its traffic in the table and the chart, rotate and revoke it", async () => {
  const failedRequests = [];
  page.on("requestfailed", (request) => failedRequests.push(request.url()));
  await page.goto(base + "/dashboard");

  // A wrong key is refused and the page stays on the login form.
  await page.fill("#login-key", "sk-sy-admin-wrong");
  await page.click("#login-button");
  await page.waitForFunction(() => document.getElementById("error").textContent.includes("refused"));
  assert.equal(await page.isVisible("#app"), false);

  await page.fill("#login-key", adminKey);
  await page.click("#login-button");
  await page.waitForSelector("#app:not(.hidden)");
  assert.match(await page.textContent("#who"), /\(admin\)/);

  // Create a key in the UI; its secret is shown once and reaches the edge snapshot.
  const keyId = "ui-key-" + randomBytes(3).toString("hex");
  await page.fill("#new-key-id", keyId);
  await page.fill("#new-key-label", "made in the browser");
  await page.fill("#new-key-models", "chat, gpt-*");
  await page.click("#create-key");
  const secret = (await page.textContent("#secret-value", { timeout: 10_000 })).trim();
  assert.match(secret, /^sk-sy-[0-9a-f]{48}$/);
  await page.waitForSelector(`#keys tr[data-key-id="${keyId}"]`);
  const snapshot = await edge("GET", "/edge/v1/keys");
  const entry = snapshot.keys.find((k) => k.id === keyId);
  assert.deepEqual(entry, { id: keyId, sha256: sha256(secret), models: ["chat", "gpt-*"],
                            expires_at: null, label: "made in the browser", team: null });
  // The key list shows only the hint, never the secret.
  assert.ok(!(await page.textContent("#keys")).includes(secret));

  // Traffic for the key shows in recent requests (with its attempts) and in the chart.
  const requestId = await sendTraffic(keyId, secret);
  await page.click("#refresh");
  const row = await page.waitForSelector(`#recent-requests tr[data-request-id="${requestId}"]`);
  const cells = await row.$$eval("td", (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[2], keyId);
  assert.equal(cells[5], "200");
  assert.equal(cells[6], "2", "attempts");
  const bars = await page.$$eval("#chart rect.bar", (rects) => rects.map((r) => ({
    nano: Number(r.getAttribute("data-cost-nano")), requests: Number(r.getAttribute("data-requests")),
    height: Number(r.getAttribute("height")) })));
  const today = bars.filter((b) => b.nano > 0);
  assert.equal(today.length, 1, JSON.stringify(bars));
  assert.equal(today[0].nano, 12_300_000);
  assert.equal(today[0].requests, 1);
  assert.ok(today[0].height > 0);
  assert.equal(await page.textContent("#total-requests"), "1");
  assert.match(await page.textContent("#top-keys"), new RegExp(keyId));
  await page.screenshot({ path: join(outputDir, "dashboard.png"), fullPage: true });

  // Rotate (the prompt answers a grace of 0 s): a new secret, the old one gone from the edge.
  await page.click(`#keys tr[data-key-id="${keyId}"] button[data-action="rotate"]`);
  await page.waitForFunction((old) => {
    const shown = document.getElementById("secret-value");
    return shown && shown.textContent !== old;
  }, secret);
  const rotated = (await page.textContent("#secret-value")).trim();
  const afterRotate = (await edge("GET", "/edge/v1/keys")).keys.filter((k) => k.id === keyId);
  assert.deepEqual(afterRotate.map((k) => k.sha256), [sha256(rotated)]);

  // Revoke (the confirm is accepted): the key leaves the edge snapshot.
  await page.click(`#keys tr[data-key-id="${keyId}"] button[data-action="revoke"]`);
  await page.waitForSelector(`#keys tr[data-key-id="${keyId}"]`, { state: "detached" });
  assert.equal((await edge("GET", "/edge/v1/keys")).keys.filter((k) => k.id === keyId).length, 0);

  // Nothing was fetched from anywhere but this server.
  assert.deepEqual(failedRequests, []);
  assert.equal(await page.textContent("#error"), "");
});
