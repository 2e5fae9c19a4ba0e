// Headless Chromium for the browser tests, the same way for each: the distribution's Chromium
// (or CHROMIUM), and the flags that keep it from reaching for the network this machine lacks.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}
