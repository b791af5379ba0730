// Drives the agent's status page in a real Chromium (playwright-core), as
// an operator would: the login first, a wrong token, the right one, the
// live table, a cut over from the page's button, and the proof. Prints one
// JSON line with what it saw; exits 1 with the reason on any failure.
// Env: PLAYWRIGHT_CORE (module dir), CHROMIUM (binary), AGENT (https URL),
// TOKEN, SOURCE (a URL the page must not show before the login),
// SCREENSHOT (where to save one).
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

function check(cond, what) {
  if (!cond) throw new Error(what);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    timeout: 60000,
  });
  const seen = { requests: [], console_errors: [], steps: [] };
  let page = null;
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    page = await context.newPage();
    page.setDefaultTimeout(30000);
    const methods = [];
    page.on("request", (r) => { seen.requests.push(r.url()); methods.push(r.method() + " " + new URL(r.url()).pathname); });
    page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push(m.text()); });
    page.on("dialog", (d) => d.accept());

    await page.goto(process.env.AGENT + "/");
    await page.waitForSelector("#login:not([hidden])");
    check(await page.isHidden("#app"), "the app shows before the login");
    const before = await page.content();
    check(!before.includes(process.env.SOURCE), "the page shows data before the login");
    seen.steps.push("login shown, no data");

    await page.fill("#token", "0".repeat(64));
    await page.click("button[type=submit]");
    await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("refused the token"));
    seen.steps.push("wrong token refused");

    await page.fill("#token", process.env.TOKEN);
    await page.click("button[type=submit]");
    await page.waitForSelector("#shards tbody tr");
    // The migration is still copying (the agent runs rate-limited): a bar
    // per shard, short of 100% while the copy is being applied (the tailer
    // may already have journaled it all and turned the phase to streaming
    // by the time a slow Chromium first looks), 100% once applied.
    const widths = () => page.$$eval("#shards tbody tr", (rs) => rs.map((r) => {
      const fill = r.querySelector(".bar > span");
      return [r.cells[1].textContent, fill ? parseFloat(fill.style.width) : NaN];
    }));
    let during = [];
    const t0 = Date.now();
    while (Date.now() - t0 < 60000) {
      const w = await widths();
      if (w.length && w.every(([phase, width]) => phase === "streaming" && width === 100)) break;
      for (const [phase, width] of w) during.push(width);
      await page.waitForTimeout(250);
    }
    check(during.some((w) => w < 100), "no bar short of 100% was seen during the copy: " + JSON.stringify(during));
    const end = await widths();
    check(end.every(([phase, width]) => phase === "streaming" && width === 100), "the bars did not reach 100% with every shard streaming: " + JSON.stringify(end));
    seen.steps.push("snapshot bars from " + Math.min(...during).toFixed(1) + "% to 100%, every shard streaming");
    const rows = await page.$$eval("#shards tbody tr", (rs) => rs.map((r) => [...r.cells].map((c) => c.textContent)));
    check(rows.length >= 1, "no shard rows");
    const routes = await page.textContent("#routes");
    check(routes.includes(process.env.SOURCE), "the routes line does not name the source: " + routes);
    seen.steps.push("live table: " + rows.length + " rows");

    // The lag chart draws once two samples are in.
    await page.waitForSelector("#chart polyline", { timeout: 10000 });
    seen.steps.push("chart drawn");

    // The token stays out of every URL and of the history.
    check(!page.url().includes(process.env.TOKEN), "the token is in the page URL");
    check(seen.requests.every((u) => !u.includes(process.env.TOKEN)), "the token is in a request URL");
    const stored = await page.evaluate(() => [sessionStorage.length, localStorage.length]);
    check(stored[0] === 1 && stored[1] === 0, "the token is kept elsewhere than the tab's session storage: " + stored);

    // Nothing but reads so far, all to the agent itself.
    const origin = new URL(process.env.AGENT).origin;
    check(seen.requests.every((u) => new URL(u).origin === origin), "a request left the agent: " + seen.requests.filter((u) => new URL(u).origin !== origin));
    check(methods.every((m) => m.startsWith("GET ")), "the page sent something before the operator asked: " + methods.filter((m) => !m.startsWith("GET ")));
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    seen.steps.push("screenshot " + process.env.SCREENSHOT);

    // Cut over from the page.
    await page.click("#stop");
    await page.waitForFunction(() => document.getElementById("state").textContent === "done", null, { timeout: 120000 });
    await page.waitForSelector("#proof-shards");
    const proof = await page.textContent("#proof");
    check(proof.includes("Read-only window") && proof.includes("0 differences"), "no proof shown: " + proof);
    seen.steps.push("cut over from the page: " + proof.split(";")[0]);

    // A new browser context (another operator) starts at the login again.
    const other = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
    await other.goto(process.env.AGENT + "/");
    await other.waitForSelector("#login:not([hidden])");
    seen.steps.push("a new session asks again");

    // The wrong token's 401 is the one error a browser logs by itself.
    const errors = seen.console_errors.filter((e) => !e.includes("status of 401"));
    check(errors.length === 0, "console errors: " + errors.join(" | "));
    console.log(JSON.stringify({ ok: true, ...seen, requests: seen.requests.length }));
  } catch (e) {
    // What the page showed last, for the report.
    try { seen.table = await page.$$eval("#shards tbody tr", (rs) => rs.map((r) => r.innerText)); } catch (_) {}
    console.log(JSON.stringify({ ok: false, error: String(e && e.message || e), ...seen }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
