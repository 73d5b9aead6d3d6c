// Drives chroma-shift's status page in headless Chromium for tests/ui.rs.
//
// Environment: UI_URL (the admin listener, http://127.0.0.1:PORT), ADMIN_TOKEN, WRONG_TOKEN,
// SCREENSHOT (a PNG path), USER_DATA_DIR (a fresh directory), CHROMIUM (default
// /usr/bin/chromium).
//
// Protocol with the test, one JSON object per stdout line:
// 1. signs in with a wrong token (expects the error), then with the right one; once the page
//    shows the test's scene it prints {"observed": ...}: every number the page shows, read from
//    the page, and takes the screenshot;
// 2. waits for a line on stdin (the test compares, then brings the stores back);
// 3. opens the cutover dialog: the dry run's checks and plan, the Run button with a wrong and
//    then the right typed word, forced when the dry run is refused; runs the cutover, waits for
//    the page to show the new epoch, and prints {"done": ...}: the dialog's contents, the
//    result, the topology shown, and every URL the browser requested with whether each admin
//    call carried the token as a header.
import { chromium } from "playwright-core";
import readline from "node:readline";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const UI_URL = env("UI_URL");
const TOKEN = env("ADMIN_TOKEN");
const WRONG = env("WRONG_TOKEN");
const SCREENSHOT = env("SCREENSHOT");
const USER_DATA_DIR = env("USER_DATA_DIR");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
// Bounds that only turn a hang into a failure.
const WAIT = { timeout: 60_000 };

const emit = (object) => process.stdout.write(JSON.stringify(object) + "\n");

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

const context = await chromium.launchPersistentContext(USER_DATA_DIR, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

try {
  const page = context.pages()[0] ?? (await context.newPage());
  const requests = [];
  page.on("request", (request) => {
    const url = request.url();
    const headers = request.headers();
    requests.push({
      url,
      method: request.method(),
      admin: new URL(url).pathname.startsWith("/admin"),
      bearer: headers.authorization === `Bearer ${TOKEN}`,
    });
  });
  // Script errors and Content-Security-Policy violations (the page must obey its own CSP).
  // An admin answer that is not a success (the wrong token's 401, a refused dry run's 409) is
  // logged as a failed resource load: expected, the page shows what it says.
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    const text = message.text();
    const answered = /^Failed to load resource: the server responded with a status of (401|409)/;
    if (message.type() === "error" && !answered.test(text)) problems.push(text);
  });

  await page.goto(`${UI_URL}/ui`);
  await page.locator("#login").waitFor({ state: "visible", ...WAIT });

  // A wrong token: the page says so and shows no data.
  await page.fill("#token", WRONG);
  await page.click("#login-button");
  await page.locator("#login-error").waitFor({ state: "visible", ...WAIT });
  const wrongTokenError = await page.textContent("#login-error");
  const dashboardHiddenAfterWrongToken = await page.locator("#dashboard").isHidden();

  await page.fill("#token", TOKEN);
  await page.click("#login-button");
  await page.locator("#dashboard").waitFor({ state: "visible", ...WAIT });
  // The test's scene: records waiting for the new store, which is down, and a dead letter.
  await page.waitForSelector("#lag-rows tr[data-collection]", WAIT);
  await page.waitForSelector('#backend-rows tr[data-backend="new"] td.up[data-up="false"]', WAIT);
  await page.waitForSelector("#dead-letter-rows tr[data-seq]", WAIT);
  await page.waitForSelector('#audit-rows tr[data-action="backfill"]', WAIT);

  const observed = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    const all = (selector, read) => Array.from(document.querySelectorAll(selector), read);
    const cells = (row) => Array.from(row.cells, (c) => c.textContent);
    return {
      primary: text("primary"),
      secondary: text("secondary"),
      epoch: text("epoch"),
      phase: text("phase"),
      collections: text("collections"),
      journal: {
        old: document.getElementById("journal-old").dataset.entries,
        new: document.getElementById("journal-new").dataset.entries,
      },
      lag: all("#lag-rows tr[data-collection]", (row) => ({
        target: row.dataset.target,
        collection: row.dataset.collection,
        entries: row.querySelector(".entries").textContent,
        age: row.querySelector(".age").textContent,
      })),
      backends: all("#backend-rows tr[data-backend]", (row) => ({
        name: row.dataset.backend,
        up: row.querySelector("td.up").dataset.up,
        cells: cells(row),
      })),
      dead_letter_count: text("dead-letter-count"),
      dead_letters: all("#dead-letter-rows tr[data-seq]", (row) => ({
        seq: row.dataset.seq,
        cells: cells(row),
      })),
      backfill: {
        state: text("backfill-state"),
        done: document.getElementById("backfill-records").dataset.done,
        total: document.getElementById("backfill-records").dataset.total,
      },
      shadow_totals: Object.fromEntries(
        all("#shadow-totals dd", (dd) => [dd.id.replace("shadow-total-", ""), dd.textContent]),
      ),
      shadow_rows: all("#shadow-rows tr[data-collection]", (row) => ({
        collection: row.dataset.collection,
        cells: cells(row),
      })),
      mismatches: all("#mismatch-rows tr[data-mismatch]", (row) => cells(row)),
      audit: all("#audit-rows tr[data-action]", (row) => cells(row)),
    };
  });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  emit({
    observed: {
      ...observed,
      wrong_token_error: wrongTokenError,
      dashboard_hidden_after_wrong_token: dashboardHiddenAfterWrongToken,
    },
  });

  await nextLine();

  // The cutover: the dialog opens on the dry run's checks and plan.
  const epochBefore = await page.textContent("#epoch");
  await page.click("#cutover");
  await page.locator("#switch-dialog").waitFor({ state: "visible", ...WAIT });
  await page.waitForSelector("#switch-checks tr[data-check]", WAIT);
  const dialog = () =>
    page.evaluate(() => ({
      summary: document.getElementById("switch-summary").textContent,
      checks: Array.from(document.querySelectorAll("#switch-checks tr[data-check]"), (row) => ({
        name: row.dataset.check,
        result: row.cells[1].textContent,
      })),
      plan: Array.from(document.querySelectorAll("#switch-plan li"), (li) => li.textContent),
      refused: document.getElementById("switch-refused").hidden
        ? null
        : document.getElementById("switch-refused").textContent,
      run_disabled: document.getElementById("switch-run").disabled,
    }));
  const dryRun = await dialog();
  const runDisabledBeforeTyping = dryRun.run_disabled;
  await page.fill("#switch-confirm", "cutover");
  const runDisabledTypedWhileRefused = await page.locator("#switch-run").isDisabled();

  // Refused (the dead letter): the operator forces it, which runs the dry run again.
  let forcedDryRun = null;
  if (dryRun.refused) {
    await page.check("#switch-force");
    await page.waitForFunction(
      () =>
        document.getElementById("switch-refused").hidden &&
        document.querySelectorAll("#switch-checks tr[data-check]").length > 0 &&
        !document.getElementById("switch-summary").textContent.startsWith("Running"),
      null,
      WAIT,
    );
    forcedDryRun = await dialog();
  }
  await page.fill("#switch-confirm", "cutove");
  const runDisabledWrongWord = await page.locator("#switch-run").isDisabled();
  await page.fill("#switch-confirm", "cutover");
  const runDisabledRightWord = await page.locator("#switch-run").isDisabled();
  await page.click("#switch-run");
  await page.waitForSelector("#switch-result.good, #switch-result.bad", WAIT);
  const result = await page.textContent("#switch-result");
  const resultGood = await page.locator("#switch-result.good").count();
  await page.click("#switch-close");
  await page.waitForFunction(
    (before) => document.getElementById("epoch").textContent !== before,
    epochBefore,
    WAIT,
  );
  await page.waitForSelector('#audit-rows tr[data-action="cutover"]', WAIT);
  const after = await page.evaluate(() => ({
    primary: document.getElementById("primary").textContent,
    epoch: document.getElementById("epoch").textContent,
    audit: Array.from(document.querySelectorAll("#audit-rows tr[data-action]"), (row) =>
      Array.from(row.cells, (c) => c.textContent),
    ),
    local_storage_keys: Object.keys(localStorage),
    session_storage_keys: Object.keys(sessionStorage),
  }));
  emit({
    done: {
      dry_run: dryRun,
      run_disabled_before_typing: runDisabledBeforeTyping,
      run_disabled_typed_while_refused: runDisabledTypedWhileRefused,
      forced_dry_run: forcedDryRun,
      run_disabled_wrong_word: runDisabledWrongWord,
      run_disabled_right_word: runDisabledRightWord,
      result,
      result_good: resultGood === 1,
      ...after,
      page_url: page.url(),
      requests,
      problems,
    },
  });
} finally {
  await context.close();
  lines.close();
}
