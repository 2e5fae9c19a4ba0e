// Drives the storefront like a customer, in headless Chromium: add two products, check out,
// follow the tracking link and watch the status bar move live to `shipped`, then screenshot it.
// Usage: node storefront.mjs BASE_URL SCREENSHOT_PATH. Prints one JSON line with what it saw;
// exits non-zero (with the reason on stderr) when any step fails. Run by host/tests/it/browser.rs.
import { launch } from "./launch.mjs";

const [base, screenshot] = process.argv.slice(2);
if (!base || !screenshot) {
  console.error("usage: node storefront.mjs BASE_URL SCREENSHOT_PATH");
  process.exit(2);
}

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.setDefaultTimeout(20_000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });

  await page.goto(`${base}/`);
  await page.locator(".card").nth(9).waitFor();
  await page.click('[data-product="1"] button.add');
  await page.click('[data-product="5"] button.add');
  await page.click('[data-product="5"] button.add');
  await page.click("#cart-link");
  await page.waitForSelector("#cart-total");
  const cartTotal = await page.textContent("#cart-total");
  await page.click("#to-checkout");

  await page.fill('input[name="customer_name"]', "Browser Bear");
  await page.fill('input[name="customer_email"]', "browser@metalbear.com");
  await page.fill('input[name="street"]', "1 Test Street");
  await page.fill('input[name="city"]', "Tel Aviv");
  await page.fill('input[name="zip_code"]', "61000");
  await page.fill('input[name="country"]', "IL");
  await page.click('form#checkout button[type="submit"]');

  const orderNumber = (await page.textContent("#order-number")).trim();
  await page.click("#track-link");
  await page.waitForSelector("#status-bar");

  // Every status the bar shows from here on, in order: proves it moves without a reload.
  const seen = [];
  await page.exposeFunction("recordStatus", (s) => { if (seen.at(-1) !== s) seen.push(s); });
  await page.evaluate(() => {
    const bar = document.getElementById("status-bar");
    window.recordStatus(bar.dataset.status);
    new MutationObserver(() => window.recordStatus(bar.dataset.status))
      .observe(bar, { attributes: true, attributeFilter: ["data-status"] });
  });
  await page.waitForSelector('#status-bar[data-status="shipped"]', { timeout: 60_000 });
  await page.waitForFunction(() => document.querySelectorAll("#notifications li").length === 4);
  const doneSteps = await page.locator(".step.done").count();
  const notifications = await page.locator("#notifications li").allTextContents();
  const badgeHidden = await page.locator("#mirrord-badge").isHidden();
  await page.screenshot({ path: screenshot, fullPage: true });

  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify({ orderNumber, cartTotal, seen, doneSteps, notifications, badgeHidden, url: page.url() }));
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
