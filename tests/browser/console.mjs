// The console in Debian's Chromium, driven by playwright-core (no browser
// download), against a running pipeline. tests/tests/console.rs starts the
// stack's stages and API and runs this with:
//   CONSOLE_URL  the API's base URL (http://localhost:<port>)
//   API_TOKEN    a token it accepts
//   GOOD_PDF, CORRUPT_PDF  documents to upload
//   SHOTS        where screenshots go
//   POISON_ID    the key of a record written undecodable to mime-detector's input
// Every wait has a deadline; a failed step exits non-zero with what failed.
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { mkdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";

const need = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = need("CONSOLE_URL");
const token = need("API_TOKEN");
const shots = need("SHOTS");
mkdirSync(shots, { recursive: true });
const WAIT = 120_000;
const poison = need("POISON_ID");
const STAGES = ["mime-detector", "location-logger", "pdf-parser", "summarizer"];

// Loads `url` again until `selector` is on it, within WAIT.
async function reloadUntil(url, selector) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    await page.goto(url);
    if (await page.$(selector)) return;
    if (Date.now() > deadline) throw new Error(`${url} never showed ${selector}`);
    await page.waitForTimeout(1000);
  }
}

function step(what) {
  console.log(`console: ${what}`);
}

async function upload(path, name) {
  const form = new FormData();
  form.append("file", new Blob([readFileSync(path)], { type: "application/pdf" }), name);
  const r = await fetch(`${base}/v1/artifacts`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
    body: form,
  });
  if (r.status !== 202) throw new Error(`upload of ${basename(path)}: ${r.status} ${await r.text()}`);
  return (await r.json()).artifact_id;
}

async function apiStatus(id) {
  const r = await fetch(`${base}/v1/artifacts/${id}`, { headers: { Authorization: `Bearer ${token}` } });
  return r.ok ? r.json() : null;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);

  step("an unauthenticated page leads to the login");
  await page.goto(`${base}/ui/artifacts`);
  await page.waitForURL(/\/ui\/login\?next=/);

  step("a wrong token is refused");
  await page.fill("#token", "not-a-token");
  await Promise.all([page.waitForLoadState(), page.click("button[type=submit]")]);
  await page.waitForSelector("#login-error");
  if (!page.url().includes("/ui/login")) throw new Error(`wrong token reached ${page.url()}`);
  await page.screenshot({ path: join(shots, "login-refused.png") });

  step("log in");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(/\/ui\/artifacts$/), page.click("button[type=submit]")]);
  await page.waitForSelector("#live-status:has-text('Live')");
  // A mark that a reload would wipe.
  await page.evaluate(() => { window.notReloaded = true; });

  step("upload through the API and watch the list without reloading");
  const good = await upload(need("GOOD_PDF"), "quarterly-report.pdf");
  const bad = await upload(need("CORRUPT_PDF"), "broken.pdf");
  await page.waitForSelector(`tr[data-id="${good}"] .badge:text-is("COMPLETED")`);
  await page.waitForSelector(`tr[data-id="${bad}"] .badge:text-is("FAILED")`);
  await page.waitForSelector(`tr[data-id="${bad}"] :text("failed at pdf-parser")`);
  if (!(await page.evaluate(() => window.notReloaded === true))) throw new Error("the list was reloaded");
  await page.screenshot({ path: join(shots, "artifacts.png") });

  step("the keyboard reaches the skip link first");
  await page.keyboard.press("Tab");
  const first = await page.evaluate(() => document.activeElement.textContent);
  if (!first.includes("Skip to content")) throw new Error(`first Tab stop: ${first}`);

  step("open the completed artifact: summary and timeline");
  await Promise.all([page.waitForURL(new RegExp(`/ui/artifacts/${good}$`)), page.click(`tr[data-id="${good}"] a`)]);
  const summary = (await page.textContent("#summary")).trim();
  if (summary.length < 10) throw new Error(`summary: ${summary}`);
  const stages = await page.$$eval("#timeline tbody tr", (rows) => rows.map((r) => r.dataset.stage));
  for (const s of ["mime-detector", "location-logger", "pdf-parser", "summarizer"]) {
    if (!stages.includes(s)) throw new Error(`timeline lacks ${s}: ${stages}`);
  }
  await page.screenshot({ path: join(shots, "artifact.png"), fullPage: true });

  step("the corrupt PDF shows FAILED at pdf-parser with its reason");
  await page.goto(`${base}/ui/artifacts/${bad}`);
  await page.waitForSelector("#state .badge:text-is('FAILED')");
  await page.waitForSelector(":text('failed at pdf-parser')");
  const reason = (await page.textContent("#failure")).trim();
  if (!reason) throw new Error("no failure reason");
  await page.screenshot({ path: join(shots, "failed.png"), fullPage: true });

  step("reprocess from the page, behind a confirmation");
  await page.goto(`${base}/ui/artifacts/${good}`);
  await Promise.all([page.waitForURL(/\/reprocess$/), page.click("a:text('Reprocess…')")]);
  await page.screenshot({ path: join(shots, "confirm.png") });
  await Promise.all([page.waitForURL(/done=reprocess/), page.click("button:text('Yes, reprocess')")]);
  await page.waitForSelector(".notice:text('generation 2')");
  // The page follows the new generation to its end.
  await page.waitForFunction(() =>
    document.querySelector("#generation")?.textContent.trim() === "2" &&
    document.querySelector("#state")?.textContent.includes("COMPLETED"));
  const after = await apiStatus(good);
  if (after?.generation !== 2 || after?.state !== "COMPLETED") throw new Error(`after reprocess: ${JSON.stringify(after)}`);

  step("a cross-site form post is refused");
  const csrfGuess = "0".repeat(64);
  const evil = createServer((_, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<form id=f method=post action="${base}/ui/artifacts/${good}/reprocess">
      <input name=csrf value="${csrfGuess}"></form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((ok) => evil.listen(0, "127.0.0.1", ok));
  const evilUrl = `http://127.0.0.1:${evil.address().port}/`;
  const refused = page.waitForResponse((r) => r.url().endsWith(`/ui/artifacts/${good}/reprocess`) && r.request().method() === "POST");
  await page.goto(evilUrl);
  const resp = await refused;
  evil.close();
  if (resp.status() !== 403) throw new Error(`cross-site post answered ${resp.status()}`);
  await page.waitForSelector(":text('was refused')");
  await page.screenshot({ path: join(shots, "cross-site-refused.png") });
  const still = await apiStatus(good);
  if (still?.generation !== 2) throw new Error(`the cross-site post reprocessed: generation ${still?.generation}`);

  step("the stages page shows each stage with its replicas and lag");
  await page.goto(`${base}/ui/artifacts`);
  await Promise.all([page.waitForURL(/\/ui\/stages$/), page.click("header nav a:text-is('Stages')")]);
  // The page polls Kafka's reading; each stage's one replica joins its group.
  await page.waitForFunction((stages) => stages.every((s) => {
    const row = document.querySelector(`#stages tr[data-stage="${s}"]`);
    return row && Number(row.querySelector("td.replicas")?.textContent) >= 1 &&
      /^\d+$/.test(row.querySelector("td.lag")?.dataset.lag ?? "");
  }), STAGES);
  const perPartition = await page.$$eval("#stage-pdf-parser table.partitions tbody tr", (rows) => rows.length);
  if (perPartition < 1) throw new Error("no partitions listed for pdf-parser");
  // The artifacts finished above give every stage its step times.
  await page.waitForFunction((stages) => stages.every((s) =>
    /^\d+ ms \/ \d+ ms, over the last \d+ artifacts finished$/.test(
      document.querySelector(`#stage-${s} dd.steps`)?.textContent ?? "")), STAGES);
  await page.screenshot({ path: join(shots, "stages.png"), fullPage: true });

  step("pause a stage from the page, behind a confirmation, and resume it");
  await Promise.all([page.waitForURL(/\/summarizer\/pause$/), page.click("a:text('Pause summarizer…')")]);
  await page.fill("input[name=reason]", "console test");
  await Promise.all([page.waitForURL(/\/ui\/stages$/), page.click("button:text('Yes, pause')")]);
  await page.waitForSelector('#stages tr[data-stage="summarizer"] .badge:text-is("PAUSED")');
  await page.waitForSelector("#stage-summarizer :text('console test')");
  await page.screenshot({ path: join(shots, "stages-paused.png") });
  await Promise.all([page.waitForURL(/\/summarizer\/resume$/), page.click("a:text('Resume summarizer…')")]);
  await Promise.all([page.waitForURL(/\/ui\/stages$/), page.click("button:text('Yes, resume')")]);
  await page.waitForSelector('#stages tr[data-stage="summarizer"] .badge:text-is("RUNNING")');

  step("the poison record is on the dead-letters page, linked to its artifact");
  await reloadUntil(`${base}/ui/dead-letters?stage=mime-detector`, `#letters tr[data-artifact="${poison}"]`);
  const row = `#letters tr[data-artifact="${poison}"]`;
  if ((await page.textContent(`${row} td.replayed`)).trim() !== "no") throw new Error("the letter is already replayed");
  const source = await page.textContent(`${row} td:nth-child(4)`);
  if (!source.includes(".created")) throw new Error(`source: ${source}`);
  await page.screenshot({ path: join(shots, "dead-letters.png"), fullPage: true });

  step("replay it from the page, behind a confirmation");
  await Promise.all([page.waitForURL(/\/replay$/), page.click("a:text('dead letters…')")]);
  await page.screenshot({ path: join(shots, "confirm-replay.png") });
  await Promise.all([page.waitForURL(/replayed=/), page.click("button:text('Yes, replay')")]);
  await page.waitForSelector("#replay-done");
  const done = await page.textContent("#replay-done");
  if (!/Replayed [1-9]/.test(done)) throw new Error(`after replay: ${done}`);
  // The replayed record fails again: its first letter is marked replayed, a new one waits.
  await reloadUntil(`${base}/ui/dead-letters?stage=mime-detector`,
    `#letters tr[data-artifact="${poison}"] td.replayed:text-is("no")`);
  const marks = await page.$$eval(`#letters tr[data-artifact="${poison}"] td.replayed`, (tds) => tds.map((t) => t.textContent.trim()));
  if (!marks.includes("yes") || marks.length < 2) throw new Error(`letters of the poison after replay: ${marks}`);

  step("phone width");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/ui/artifacts`);
  await page.waitForSelector(`tr[data-id="${good}"]`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: join(shots, "artifacts-phone.png"), fullPage: true });
  for (const [path, shot] of [["/ui/stages", "stages-phone.png"], ["/ui/dead-letters?stage=mime-detector", "dead-letters-phone.png"]]) {
    await page.goto(`${base}${path}`);
    const wider = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (wider > 1) throw new Error(`${path} is ${wider}px wider than a phone`);
    await page.screenshot({ path: join(shots, shot), fullPage: true });
  }
  console.log("console: all steps passed");
} catch (e) {
  if (page) await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`console: FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
