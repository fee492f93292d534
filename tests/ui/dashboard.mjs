// Drives the torusd dashboard in Debian's chromium for tests/life
// TestDashboard. Usage: node dashboard.mjs URL ARTIFACT_DIR
//
// It opens URL, then reads one JSON request a line on stdin:
//   {"name": "degraded", "expr": "<JS predicate>", "timeout_ms": 15000}
// waits (polling) until the predicate holds in the page, saves a full-page
// screenshot ARTIFACT_DIR/<name>.png, and answers one JSON line on stdout:
//   {"name": ..., "ok": true|false, "ms": ..., "state": {...}, "error": ...}
// where state is what the page shows (summary, peers, volumes). It exits
// when stdin closes.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  console.error("usage: node dashboard.mjs URL ARTIFACT_DIR");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "torus-ui-chromium-"));
// A new empty profile (--user-data-dir), and the flags that keep chromium
// off the network on a closed machine.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1280, height: 1000 },
});
const page = browser.pages()[0] || await browser.newPage();
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("response", (r) => { if (r.status() >= 400) consoleErrors.push(r.status() + " " + r.url()); });
await page.goto(url);

// What the page shows, read off its data attributes.
function shown() {
  const d = (id) => document.getElementById(id)?.dataset || {};
  return {
    conn: d("conn").conn,
    peersUp: d("sum-peers").peersUp, peersDown: d("sum-peers").peersDown,
    volumes: document.getElementById("sum-volumes")?.textContent,
    healing: d("healing").healing, healSeen: d("healing").healSeen, pending: d("healing").pending,
    healLine: document.getElementById("heal-line")?.textContent,
    rate: document.getElementById("heal-rate")?.textContent, eta: document.getElementById("heal-eta")?.textContent,
    peers: [...document.querySelectorAll("#peers tbody tr")].map((r) => r.dataset.peerId + "=" + r.dataset.peerState),
    vols: [...document.querySelectorAll("#volumes tbody tr")].map((r) => r.dataset.volume + "=" + r.dataset.volumeHealth +
      " under=" + r.dataset.underReplicated + " pending=" + r.dataset.pendingBytes),
    ringArcs: [...document.querySelectorAll("#ring [data-ring-member]")].map((a) => a.dataset.ringMember + "=" + a.dataset.peerState),
    events: [...document.querySelectorAll("#events li")].slice(0, 5).map((l) => l.dataset.eventKind),
  };
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const req = JSON.parse(line);
  const start = Date.now();
  const res = { name: req.name, ok: true };
  try {
    await page.waitForFunction(req.expr, null, { timeout: req.timeout_ms || 15000, polling: 200 });
  } catch (e) {
    res.ok = false;
    res.error = String(e.message || e).split("\n")[0];
  }
  res.ms = Date.now() - start;
  res.state = await page.evaluate(shown);
  res.console_errors = consoleErrors.splice(0);
  res.screenshot = join(artifacts, req.name + ".png");
  await page.screenshot({ path: res.screenshot, fullPage: true });
  process.stdout.write(JSON.stringify(res) + "\n");
}
await browser.close();
