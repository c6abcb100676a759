// The dashboard in a real browser: headless Chromium (Debian package) driven by
// playwright-core, against a live control plane fed by real gateway traffic: the real
// gpu-backend (SmolLM2 and the control plane on SQLite in a fresh data directory) behind
// host-runner running filter.wasm, which syncs its keys from the control plane and ships
// its usage records there, as in `./switchyard run`.
//
//   tests/ui/run.sh              installs and builds what is missing, then runs this file
//
// Environment: SWITCHYARD_GPU_BACKEND (binary, default target/release/gpu-backend),
// SWITCHYARD_HOST_RUNNER (default target/release/host-runner), SWITCHYARD_FILTER_WASM
// (default target/wasm32-wasip1/release/switchyard_filter.wasm), SWITCHYARD_MODELS_DIR
// (default .cache/models), CHROMIUM (default /usr/bin/chromium), UI_TEST_OUTPUT (screenshots,
// default tests/ui/output).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../..");
const binary = process.env.SWITCHYARD_GPU_BACKEND || join(repo, "target/release/gpu-backend");
const hostRunner = process.env.SWITCHYARD_HOST_RUNNER || join(repo, "target/release/host-runner");
const filterWasm = process.env.SWITCHYARD_FILTER_WASM
  || join(repo, "target/wasm32-wasip1/release/switchyard_filter.wasm");
const modelsDir = process.env.SWITCHYARD_MODELS_DIR || join(repo, ".cache/models");
// USD per million tokens, so that the local model's traffic has a cost to chart.
const PRICE = { input: 0.15, output: 0.6 };
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const outputDir = process.env.UI_TEST_OUTPUT || join(here, "output");

const adminKey = "sk-sy-admin-" + randomBytes(16).toString("hex");
const edgeToken = "edge-" + randomBytes(16).toString("hex");
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

let server, gateway, base, gatewayBase, dataDir, browser, page;
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

async function waitForServer(child, url, deadlineMs) {
  const deadline = Date.now() + deadlineMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${url}: server exited (${child.exitCode}):\n${serverLog}`);
    try {
      if ((await fetch(url)).ok) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no answer from ${url} in time:\n${serverLog}`);
}

function start(command, args, env) {
  const child = spawn(command, args, { env: { ...process.env, ...env } });
  child.on("error", (error) => { serverLog += `could not start ${command}: ${error.message}\n`; });
  child.stdout.on("data", (d) => { serverLog += d; });
  child.stderr.on("data", (d) => { serverLog += d; });
  return child;
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
 * Real gateway traffic with `secret`: a chat request through host-runner + filter.wasm to
 * SmolLM2 on gpu-backend. The key reaches the gateway by key sync, so the first tries may be
 * refused (401) until it has polled. Returns the request id and the usage the gateway answered
 * with, which the ledger must show.
 */
async function sendTraffic(secret) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const response = await fetch(gatewayBase + "/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        model: "smollm2", max_tokens: 8,
        messages: [{ role: "user", content: "What is the capital of France?" }],
      }),
    });
    const text = await response.text();
    if (response.status === 401 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    assert.equal(response.status, 200, text);
    const answer = JSON.parse(text);
    const requestId = response.headers.get("x-request-id");
    assert.ok(requestId, "the gateway names every request");
    assert.ok(answer.usage.prompt_tokens > 0 && answer.usage.completion_tokens > 0, text);
    return { requestId, usage: answer.usage };
  }
}

/** Polls the gateway with `secret` until it answers `status` or `ms` pass; the last status. */
async function statusWithin(secret, status, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const response = await fetch(gatewayBase + "/v1/models", {
      headers: { Authorization: `Bearer ${secret}` },
    });
    await response.arrayBuffer();
    if (response.status === status || Date.now() >= deadline) return response.status;
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  mkdirSync(outputDir, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), "switchyard-ui-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = start(binary, [
    "--models-dir", modelsDir, "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir,
    "--edge-token-sha256", sha256(edgeToken),
  ], { SWITCHYARD_ADMIN_KEY: adminKey, SWITCHYARD_DATABASE_URL: "" });
  await waitForServer(server, base + "/healthz", 120_000);

  // The gateway: no static keys, every key comes from the control plane.
  const gatewayConfig = join(dataDir, "gateway.json");
  writeFileSync(gatewayConfig, JSON.stringify({
    keys: [],
    providers: { local: { kind: "openai", base_url: base, cluster: "gpu_backend" } },
    models: [{
      name: "smollm2",
      deployments: [{ provider: "local", model: "smollm2-135m-instruct", price: PRICE }],
      defaults: { temperature: 0 },
    }],
    control_plane: {
      base_url: base, cluster: "control_plane", token_secret: "SWITCHYARD_EDGE_TOKEN",
      key_sync_interval_ms: 250, usage_flush_ms: 250,
    },
  }));
  const gatewayPort = await freePort();
  const adminPort = await freePort();
  gatewayBase = `http://127.0.0.1:${gatewayPort}`;
  gateway = start(hostRunner, [
    "serve", "--filter", filterWasm, "--plugin-config", gatewayConfig,
    "--listen", `127.0.0.1:${gatewayPort}`, "--admin", `127.0.0.1:${adminPort}`,
    "--cluster", `gpu_backend=127.0.0.1:${port}`, "--cluster", `control_plane=127.0.0.1:${port}`,
    "--env", "SWITCHYARD_EDGE_TOKEN",
  ], { SWITCHYARD_EDGE_TOKEN: edgeToken });
  await waitForServer(gateway, `http://127.0.0.1:${adminPort}/ready`, 60_000);

  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
  page.on("dialog", (dialog) => dialog.accept(dialog.type() === "prompt" ? "0" : undefined));
});

after(async () => {
  await browser?.close();
  gateway?.kill("SIGTERM");
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("log in, create a key, use it through the gateway, see the request in the table and the chart, rotate and revoke it", async () => {
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
  await page.fill("#new-key-models", "smollm2, gpt-*");
  await page.click("#create-key");
  const secret = (await page.textContent("#secret-value", { timeout: 10_000 })).trim();
  assert.match(secret, /^sk-sy-[0-9a-f]{48}$/);
  await page.waitForSelector(`#keys tr[data-key-id="${keyId}"]`);
  const snapshot = await edge("GET", "/edge/v1/keys");
  const entry = snapshot.keys.find((k) => k.id === keyId);
  assert.deepEqual(entry, { id: keyId, sha256: sha256(secret), models: ["smollm2", "gpt-*"],
                            expires_at: null, label: "made in the browser", team: null });
  // The key list shows only the hint, never the secret.
  assert.ok(!(await page.textContent("#keys")).includes(secret));

  // A request through the gateway with the new key shows in recent requests (with its
  // attempts) and in the chart, once the gateway has shipped its usage record.
  const { requestId, usage } = await sendTraffic(secret);
  let row = null;
  for (const deadline = Date.now() + 15_000; !row && Date.now() < deadline;) {
    await page.click("#refresh");
    row = await page.waitForSelector(`#recent-requests tr[data-request-id="${requestId}"]`,
                                     { timeout: 1_000 }).catch(() => null);
  }
  assert.ok(row, `request ${requestId} never reached the dashboard:\n${serverLog}`);
  const cells = await row.$$eval("td", (tds) => tds.map((td) => td.textContent));
  assert.equal(cells[2], keyId);
  assert.equal(cells[5], "200");
  assert.equal(cells[6], "1", "attempts");
  const bars = await page.$$eval("#chart rect.bar", (rects) => rects.map((r) => ({
    nano: Number(r.getAttribute("data-cost-nano")), requests: Number(r.getAttribute("data-requests")),
    height: Number(r.getAttribute("height")) })));
  const today = bars.filter((b) => b.nano > 0);
  assert.equal(today.length, 1, JSON.stringify(bars));
  // The ledger's cost is the model's price times the tokens the gateway answered with.
  const expectedNano = (usage.prompt_tokens * PRICE.input + usage.completion_tokens * PRICE.output) * 1_000;
  assert.ok(Math.abs(today[0].nano - expectedNano) <= 1, `${today[0].nano} vs ${expectedNano}`);
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
  // The gateway obeys: the old secret is refused once the next key sync has run.
  assert.equal(await statusWithin(secret, 401, 5_000), 401);

  // Revoke (the confirm is accepted): the key leaves the edge snapshot.
  await page.click(`#keys tr[data-key-id="${keyId}"] button[data-action="revoke"]`);
  await page.waitForSelector(`#keys tr[data-key-id="${keyId}"]`, { state: "detached" });
  assert.equal((await edge("GET", "/edge/v1/keys")).keys.filter((k) => k.id === keyId).length, 0);

  // Nothing was fetched from anywhere but this server.
  assert.deepEqual(failedRequests, []);
  assert.equal(await page.textContent("#error"), "");
});
