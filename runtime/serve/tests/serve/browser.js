// The page as a person uses it, in headless Chromium (Debian's `chromium`, driven by
// playwright-core): ask, watch steps stream in, read the answer, stop a long run, reload
// and find the conversation, export it. Run by browser.rs: node browser.js URL SCREENSHOT.
'use strict';
const { chromium } = require('playwright-core');
const assert = require('assert');
const fs = require('fs');

const [url, shot] = process.argv.slice(2);
const LOOP = 'Run exactly this Python code and nothing else:\nimport time\nwhile True:\n    time.sleep(0.01)';

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 860 }, acceptDownloads: true });
    const page = await ctx.newPage();
    const failed = [];
    page.on('requestfailed', (r) => { if (!r.url().includes('/v1/agent/runs')) failed.push(r.url()); });
    page.on('pageerror', (e) => failed.push('page error: ' + e.message));
    page.on('request', (r) => { if (!r.url().startsWith(url)) failed.push('outside request: ' + r.url()); });
    await page.goto(url);
    assert.strictEqual(await page.title(), 'small-agent');

    // Ask with the keyboard only.
    await page.focus('#question');
    await page.keyboard.type('What is 6 times 7?');
    await page.keyboard.press('Enter');
    // Steps stream in: the live step shows text before the answer exists.
    await page.waitForFunction(() => {
      const live = document.querySelector('pre.live');
      return live && live.textContent.length > 10 && !document.querySelector('.answer');
    }, null, { timeout: 120000 });
    const liveText = await page.textContent('pre.live');
    await page.waitForSelector('.answer', { timeout: 180000 });
    const answer = await page.textContent('.answer');
    assert.ok(answer.trim().length > 0 && !answer.includes('No answer'), 'answer: ' + answer);
    await page.waitForSelector('.stats');
    const steps = await page.$$eval('details.step', (d) => d.length);
    assert.ok(steps >= 1);
    // Collapsed once the answer is in; opening one shows the code.
    assert.strictEqual(await page.$eval('details.step', (d) => d.open), false);
    await page.click('details.step > summary');
    await page.waitForSelector('details.step[open] pre.code');
    await page.screenshot({ path: shot, fullPage: false });
    console.log('answered:', JSON.stringify(answer), 'steps:', steps, 'live text seen:', JSON.stringify(liveText.slice(0, 40)));

    // Stop a run that would go on: the page shows it stopped promptly.
    await page.fill('#question', LOOP);
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => {
      const live = document.querySelector('pre.live');
      return live && live.textContent.length > 5;
    }, null, { timeout: 120000 });
    await page.waitForFunction(() => !document.querySelector('#stop').disabled);
    const t0 = Date.now();
    await page.click('#stop');
    await page.waitForFunction(() => document.querySelector('#status').textContent === 'Stopped.', null, { timeout: 10000 });
    // Reported, not asserted: the time is the machine's speed (the wait above gives up
    // after 10 s, which only a run that went on would take).
    const stopMs = Date.now() - t0;
    assert.strictEqual(await page.$eval('#ask', (b) => b.disabled), false);
    const lastStats = await page.$$eval('.stats', (s) => s[s.length - 1].textContent);
    assert.ok(lastStats.includes('stopped'), lastStats);
    console.log('stopped in', stopMs, 'ms');

    // Reload: the conversation is in the history with both questions.
    await page.reload();
    await page.waitForSelector('#history-list li');
    const questions = await page.$$eval('.question', (q) => q.map((x) => x.textContent));
    assert.strictEqual(questions.length, 2, JSON.stringify(questions));
    assert.strictEqual(questions[0], 'What is 6 times 7?');
    assert.strictEqual(await page.textContent('.answer'), answer);
    const titles = await page.$$eval('#history-list li button.open', (b) => b.map((x) => x.textContent));
    assert.ok(titles.includes('What is 6 times 7?'), JSON.stringify(titles));

    // Export: the trajectory lines of the finished answers.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
    const lines = fs.readFileSync(await download.path(), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.ok(lines.length >= 1);
    assert.strictEqual(lines[0].question, 'What is 6 times 7?');
    assert.strictEqual(lines[0].generated_answer, answer);
    assert.ok(Array.isArray(lines[0].log_data.messages));

    // A new conversation starts empty; the old one stays in the history.
    await page.click('#new-conv');
    assert.strictEqual(await page.$$eval('.question', (q) => q.length), 0);
    assert.ok((await page.$$eval('#history-list li', (l) => l.length)) >= 1);

    // Dark mode renders too (no assertion on colours beyond the background changing).
    const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await page.emulateMedia({ colorScheme: 'dark' });
    const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.notStrictEqual(light, dark);

    assert.deepStrictEqual(failed, []);
    console.log('ok');
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
