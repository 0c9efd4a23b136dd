// The ops console as an operator uses it, in Debian's headless chromium.
// Run by console/tests/browser.rs, which starts everything behind the
// console and passes what it posted in the environment. Each step stops at
// its first failed check, naming it, the page and what the page showed;
// the script exits non-zero if any step failed.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (console/tests/browser.rs runs this script)`);
  return value;
}

const base = env('CONSOLE_URL');
const user = env('CONSOLE_USER');
const password = env('CONSOLE_PASSWORD');
const number = env('CALL_NUMBER'); // as posted and stored: +33612345678
const typed = env('CALL_TYPED'); // as an operator types it: 06 12 34 56 78
// Dead letters of callstream.dlq.v1, as `<partition>:<offset>`.
const malformedLetter = env('MALFORMED_LETTER');
const fixedLetter = env('FIXED_LETTER');
const screenshots = process.env.CONSOLE_SCREENSHOTS;

// Without the background-networking flags chromium calls out at start, and
// the closed network refuses it.
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
// A hung page must not hang the cargo test.
const watchdog = setTimeout(() => {
  console.error('not ok - the script took over 3 minutes');
  process.exit(1);
}, 180_000);

let page; // the page of the step under way, shown when a check fails
const ok = (what) => console.log(`ok - ${what}`);

// Each step starts from its own page, so one that fails does not hide how
// the others fare; the redelivery's steps need theirs in order all the same.
const steps = [signInIsRefused, overview, searchWithTheKeyboard, deadLetters, dryRunThenRedeliver, actions];
let failed = 0;
try {
  const signedIn = await signedInContext();
  for (const step of steps) {
    page = step === signInIsRefused ? undefined : await signedIn.newPage();
    try {
      await step();
    } catch (error) {
      failed++;
      console.log(`not ok - ${step.name}: ${error.message}`);
      if (page && !page.isClosed()) {
        console.log(`  page: ${page.url()}`);
        const text = await page.locator('body').innerText().catch(() => '(no body)');
        console.log(`  it showed:\n${text.slice(0, 2000).replace(/^/gm, '  | ')}`);
      }
    }
    await page?.close();
  }
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
console.log(`${steps.length - failed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;

async function signInIsRefused() {
  const attempts = [
    ['no credentials', {}],
    ['a wrong password', { httpCredentials: { username: user, password: `${password}-wrong` } }],
  ];
  for (const [what, options] of attempts) {
    const context = await browser.newContext(options);
    page = await context.newPage();
    const answers = [];
    page.on('response', (r) => r.request().isNavigationRequest() && answers.push(r));
    // With nothing to answer the challenge with, chromium ends the
    // navigation with ERR_INVALID_AUTH_CREDENTIALS after the 401 (with a
    // wrong password it shows the 401): the answer is what is checked.
    await page.goto(`${base}/`).catch((error) => {
      if (!error.message.includes('ERR_INVALID_AUTH_CREDENTIALS')) throw error;
    });
    const answer = answers.at(-1);
    assert.ok(answer, `sign-in with ${what}: no answer`);
    assert.equal(answer.status(), 401, `sign-in with ${what}: status`);
    assert.match(
      answer.headers()['www-authenticate'] ?? '',
      /^Basic realm="callstream console"/,
      `sign-in with ${what}: WWW-Authenticate`,
    );
    await context.close();
    ok(`sign-in with ${what} is refused (401, Basic)`);
  }
}

async function signedInContext() {
  const context = await browser.newContext({
    httpCredentials: { username: user, password },
    viewport: { width: 1280, height: 900 },
  });
  context.setDefaultTimeout(20_000);
  return context;
}

// Navigates and checks the answer is a page, not an error; `shot` names
// its screenshot, taken before the page's checks so a failing page is seen.
async function visit(path, shot) {
  const response = await page.goto(`${base}${path}`);
  assert.equal(response.status(), 200, `GET ${path}: status`);
  if (shot) await screenshot(shot);
  await checkAccessible();
}

// Clicks a submit button and waits for the page its POST answers.
async function submit(button, what) {
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.request().isNavigationRequest()),
    button.click(),
  ]);
  await page.waitForLoadState('load');
  assert.equal(response.status(), 200, `${what}: status`);
  await checkAccessible();
}

// Every page: one h1 in one main (the skip link's target), and every form
// control a person can reach named by a label or aria-label.
async function checkAccessible() {
  const problems = await page.evaluate(() => {
    const out = [];
    const count = (selector) => document.querySelectorAll(selector).length;
    if (count('h1') !== 1) out.push(`${count('h1')} h1 elements, not one`);
    if (count('main') !== 1) out.push(`${count('main')} main elements, not one`);
    if (!document.querySelector('main#main')) out.push('no <main id="main">');
    if (!document.querySelector('a.skip[href="#main"]')) out.push('no skip link to #main');
    if (!document.querySelector('nav[aria-label="Main"]')) out.push('no <nav aria-label="Main">');
    const named = (text) => (text ?? '').trim() !== '';
    for (const control of document.querySelectorAll('input, select, textarea')) {
      if (control.type === 'hidden') continue;
      const labelled =
        [...(control.labels ?? [])].some((label) => named(label.textContent)) ||
        named(control.getAttribute('aria-label')) ||
        (control.getAttribute('aria-labelledby') ?? '')
          .split(/\s+/)
          .some((id) => named(document.getElementById(id)?.textContent));
      if (!labelled) {
        out.push(`<${control.tagName.toLowerCase()} name="${control.name}" id="${control.id}"> has no label`);
      }
    }
    return out;
  });
  assert.deepEqual(problems, [], `${page.url()}: accessibility`);
}

async function screenshot(name) {
  if (!screenshots) return;
  await page.screenshot({ path: `${screenshots}/${name}`, fullPage: true });
  ok(`screenshot ${screenshots}/${name}`);
}

async function overview() {
  await visit('/', 'console-overview.png');
  assert.equal((await page.locator('h1').innerText()).trim(), 'Overview', 'the overview\'s h1');
  for (const id of ['deliveries', 'answers', 'spool', 'lag', 'dead-letters-recent']) {
    assert.equal(await page.locator(`section#${id}`).count(), 1, `the overview has section#${id}`);
  }
  assert.ok(await page.locator('#deliveries svg').count() > 0, 'the deliveries section has a chart (svg)');
  ok('right credentials: the overview');
}

// Presses Tab until `selector` has the focus (none if it has it already,
// as an autofocus field does); fails after `most` presses.
async function tabTo(selector, most) {
  const focused = () => page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector);
  for (let i = 0; i <= most; i++) {
    if (await focused()) return i;
    if (i < most) await page.keyboard.press('Tab');
  }
  const at = await page.evaluate(() => document.activeElement?.outerHTML.slice(0, 200));
  assert.fail(`${selector} not reached with ${most} Tabs (the focus is on ${at})`);
}

async function searchWithTheKeyboard() {
  // From the overview, keyboard only: the skip link comes first, then the
  // menu; Enter on "Events", Tab to the search field, type, Enter.
  await visit('/');
  assert.equal(await tabTo('a.skip', 1), 1, 'the first Tab reaches the skip link');
  await tabTo('nav[aria-label="Main"] a[href="/events"]', 6);
  await Promise.all([page.waitForURL(/\/events$/), page.keyboard.press('Enter')]);
  await checkAccessible();
  // The search field is the page's first form control: focused on load,
  // or after the skip link and the four menu entries.
  await tabTo('input#q', 6);
  await page.keyboard.type(typed);
  await Promise.all([page.waitForURL(/\/events\?.*q=/), page.keyboard.press('Enter')]);
  await page.waitForLoadState('load');
  await checkAccessible();
  assert.equal(await page.locator('form[role="search"]').count(), 1, 'the search form has role=search');
  const row = page.locator('table#events tr', { hasText: number });
  assert.ok(await row.count() > 0, `table#events has a row with ${number}, searched as "${typed}"`);
  const link = row.first().locator('a[href^="/events/"]');
  assert.equal(await link.count(), 1, 'the event\'s row links to /events/<id>');
  ok(`the call ${number} found with the keyboard, typed as "${typed}"`);
  // The event's own page.
  await visit(await link.getAttribute('href'));
  assert.ok((await page.locator('main').innerText()).includes(number), 'the event page shows the number');
  ok('the event page');
}

// The row of a dead letter of callstream.dlq.v1 (`<partition>:<offset>`).
function letterRow(letter) {
  return page.locator(`section#dlq tr[data-letter$=":${letter}"]`);
}

async function deadLetters() {
  await visit('/dead-letters', 'console-dead-letters.png');
  for (const id of ['dlq', 'crm-dlq', 'recordings-dlq']) {
    const section = page.locator(`section#${id}`);
    assert.equal(await section.count(), 1, `/dead-letters has section#${id}`);
    assert.equal(await section.locator('h2').count(), 1, `section#${id} has an h2`);
  }
  // A topic without letters says so rather than showing an empty table.
  assert.equal(await page.locator('section#dlq table').count(), 1, 'section#dlq has a table');
  const malformed = letterRow(malformedLetter);
  assert.equal(await malformed.count(), 1, `one row for the malformed letter ${malformedLetter}`);
  assert.equal((await malformed.locator('td.reason').innerText()).trim(), 'malformed', 'its reason');
  assert.ok((await malformed.locator('td.source').innerText()).includes('onoff'), 'its source');
  const body = malformed.locator('details pre');
  assert.equal((await malformed.locator('details summary').innerText()).trim(), 'Body', 'the body behind a summary');
  assert.ok((await body.textContent()).includes('{not json'), 'the raw body');
  ok('the malformed delivery is on /dead-letters, reason malformed');
  const fixed = letterRow(fixedLetter);
  assert.equal(await fixed.count(), 1, `one row for the letter ${fixedLetter}`);
  assert.equal((await fixed.locator('td.reason').innerText()).trim(), 'mapping_failed', 'its reason');
}

async function dryRunThenRedeliver() {
  await visit('/dead-letters');
  const dryRun = letterRow(fixedLetter).locator('button[name="mode"][value="dry-run"]');
  assert.equal(await dryRun.count(), 1, 'the letter has a "Dry run" button');
  assert.equal((await dryRun.innerText()).trim(), 'Dry run');
  await submit(dryRun, 'dry run');
  const result = page.locator('section#result');
  const dryText = await result.innerText();
  assert.match(dryText, /Dry run/, 'the dry run\'s result says "Dry run"');
  assert.match(dryText, /would publish/i, 'the dry run says what it would publish');
  ok('dry run: would publish');
  const send = result.locator('button[name="mode"][value="send"]');
  assert.equal((await send.innerText()).trim(), 'Redeliver', 'the result offers "Redeliver"');
  await submit(send, 'redeliver');
  const sent = page.locator('section#result');
  assert.match(await sent.innerText(), /Published/, 'the redelivery says "Published"');
  assert.equal(await sent.locator('a[href="/actions"]').count(), 1, 'the result links to /actions');
  ok('redelivered: published');
}

async function actions() {
  await visit('/actions');
  const rows = await page.locator('table#actions tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.innerText.trim())));
  // Cells: time, user, action, letter, outcome.
  const of = (action) =>
    rows.find((cells) => cells[1] === user && cells[2] === action && cells[3].endsWith(`:${fixedLetter}`));
  for (const action of ['dry-run', 'redeliver']) {
    assert.ok(of(action), `/actions lists ${action} of ${fixedLetter} by ${user}: ${JSON.stringify(rows)}`);
    assert.ok(of(action)[4], `${action} has an outcome`);
  }
  ok('/actions lists the dry run and the redelivery, by the user');
}
