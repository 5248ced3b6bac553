// A real browser's EventSource against the real server: multi-line data
// arrives whole, and a stream cut by the server resumes with Last-Event-ID
// with no event lost or repeated. Run with `make browser-test`.
const { chromium } = require('playwright-core');

(async () => {
  const url = process.argv[2];
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.title === 'done', null, { timeout: 15000 });
  const r = await page.evaluate(() => window.result);
  const text = await page.textContent('#log');
  await browser.close();
  const failures = [];
  if (r.opens < 3) failures.push(`expected at least 3 (re)connections, got ${r.opens}`);
  const minEvents = Number(process.env.MIN_EVENTS) || 8;
  if (r.events < minEvents) failures.push(`expected at least ${minEvents} events, got ${r.events}`);
  if (r.unique !== r.events) failures.push(`${r.events - r.unique} duplicated events`);
  if (r.gaps !== 0) failures.push(`${r.gaps} gaps in the ids across reconnects`);
  if (!/"line \d+\\nsecond line"/.test(text)) failures.push('two-line data did not arrive whole');
  console.log(`browser: ${r.opens} connections, ${r.events} events, ${r.gaps} gaps, ${r.events - r.unique} duplicates`);
  if (failures.length) { console.log(failures.join('\n')); console.log('0 passed, 1 failed'); process.exit(1); }
  console.log('1 passed, 0 failed');
})().catch((e) => { console.error(e); process.exit(1); });
