// Drives the operator console like an operator, in headless Chromium: type the token, find the
// dead letter of a poison order, inspect it, redrive it from the page. The test has already
// uploaded the fixed handler version. Usage: node console.mjs BASE_URL TOKEN ORDER_ID. Prints one
// JSON line with what it saw; exits non-zero (with the reason on stderr) when any step fails.
// Run by host/tests/it/browser.rs.
import { launch } from "./launch.mjs";

const [base, token, orderId] = process.argv.slice(2);
if (!base || !token || !orderId) {
  console.error("usage: node console.mjs BASE_URL TOKEN ORDER_ID");
  process.exit(2);
}

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  await page.goto(`${base}/admin/`);
  // A wrong token is refused with a message and nothing is shown.
  await page.fill('input[name="token"]', "wrong");
  await page.click('form#login button[type="submit"]');
  await page.waitForSelector("#login-error:not([hidden])");
  const refused = (await page.textContent("#login-error")).trim();

  await page.fill('input[name="token"]', token);
  await page.click('form#login button[type="submit"]');
  await page.waitForSelector("#console:not([hidden])");
  const urlHasToken = page.url().includes(token);
  const handlerVersion = (await page.textContent('#handlers tr[data-handler="order-processor"] td:nth-child(2)')).trim();

  // The poison order's dead letter is listed; open it.
  const row = page.locator("#dead-letters tr.letter", { hasText: orderId });
  await row.waitFor();
  const id = await row.getAttribute("data-id");
  await row.click();
  await page.waitForSelector(`#detail[data-id="${id}"]:not([hidden])`);
  const reason = (await page.textContent('#detail-fields dd[data-field="reason"]')).trim();
  const record = JSON.parse(await page.textContent("#detail-record"));

  await page.click("#redrive");
  await page.waitForSelector("#action-result[data-outcome]");
  const outcome = await page.getAttribute("#action-result", "data-outcome");
  await page.waitForSelector('#detail[data-state="redriven"]');
  const redriveDisabled = await page.isDisabled("#redrive");
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ refused, urlHasToken, handlerVersion, id, reason, recordOrder: record.value?.order_id,
    outcome, redriveDisabled }));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
