// Drives the console's shadow view like an operator, in headless Chromium. The test has started
// two shadow candidates: one for the notifier that answers a cancellation differently, one for the
// order processor that answers as it does. Open the first, read its counts and the recorded
// difference, abort it; open the second and promote it. Usage: node shadow.mjs BASE_URL TOKEN
// SCREENSHOT. Prints one JSON line with what it saw; exits non-zero when a step fails.
// Run by host/tests/it/browser.rs.
import { launch } from "./launch.mjs";

const [base, token, screenshot] = process.argv.slice(2);
if (!base || !token || !screenshot) {
  console.error("usage: node shadow.mjs BASE_URL TOKEN SCREENSHOT");
  process.exit(2);
}

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  await page.goto(`${base}/admin/`);
  await page.fill('input[name="token"]', token);
  await page.click('form#login button[type="submit"]');
  await page.waitForSelector("#console:not([hidden])");
  const row = (name) => `#handlers tr[data-handler="${name}"]`;
  const shadowCell = (await page.textContent(`${row("notifier")} td:last-child`)).trim();

  await page.click(row("notifier"));
  await page.waitForSelector('#shadow[data-handler="notifier"][data-state="running"]:not([hidden])');
  const field = async (name) => (await page.textContent(`#shadow-fields dd[data-field="${name}"]`)).trim();
  const different = await field("different");
  const diff = page.locator("#diffs tr.diff").first();
  await diff.waitFor();
  const serving = (await diff.locator("td:nth-child(4)").textContent()).trim();
  const candidate = (await diff.locator("td:nth-child(5)").textContent()).trim();
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.click("#abort");
  await page.waitForSelector('#shadow[data-handler="notifier"][data-state="dropped"]');
  const aborted = await page.getAttribute("#shadow-result", "data-outcome");
  const abortDisabled = await page.isDisabled("#abort");

  const before = (await page.textContent(`${row("order-processor")} td:nth-child(2)`)).trim();
  await page.click(row("order-processor"));
  await page.waitForSelector('#shadow[data-handler="order-processor"][data-state="running"]:not([hidden])');
  const candidateVersion = await field("candidate");
  await page.click("#promote");
  await page.waitForSelector('#shadow[data-handler="order-processor"][data-state="promoted"]');
  const promoted = await page.getAttribute("#shadow-result", "data-outcome");
  const after = (await page.textContent(`${row("order-processor")} td:nth-child(2)`)).trim();
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ shadowCell, different, serving, candidate, aborted, abortDisabled, before,
    candidateVersion, promoted, after }));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
