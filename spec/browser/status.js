// The admin listener's /status page in a real browser: it loads with no
// external asset, follows /status/events, and its figures move with the
// traffic made here (streams on a rollout, a 404, a script error, a
// reload). Saves a screenshot to docs/status.png. Run with `make browser-test`.
const { chromium } = require('playwright-core');
const http = require('http');

const [adminUrl, publicUrl, pid] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Streams held open (read and discarded), and plain requests.
const held = [];
function stream(path) {
  const req = http.get(publicUrl + path, (res) => res.resume());
  req.on('error', () => {});
  held.push(req);
}
function get(path) {
  return new Promise((resolve) => {
    http.get(publicUrl + path, (res) => { res.resume(); res.on('end', resolve); }).on('error', resolve);
  });
}

(async () => {
  for (let i = 0; i < 40; i++) stream('/demo?user=u' + i);
  for (let i = 0; i < 8; i++) stream('/bt');
  await get('/no/such/page');
  await get('/demo/fail');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1180, height: 760 } });
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith(adminUrl)) external.push(r.url()); });
  await page.goto(adminUrl + '/status');
  await page.waitForFunction(() => +(document.body.dataset.updates || 0) >= 2, null, { timeout: 15000 });
  process.kill(Number(pid), 'SIGHUP');   // a reload, for the "recent" list
  for (let i = 40; i < 60; i++) stream('/demo?user=u' + i);
  await page.waitForFunction(() => +(document.body.dataset.updates || 0) >= 14, null, { timeout: 30000 });
  const figures = await page.evaluate(() => ({
    streams: document.getElementById('streams').textContent,
    events: document.getElementById('out').textContent,
    p99: document.getElementById('p99').textContent,
    variants: document.getElementById('variants').textContent,
    recent: document.getElementById('recent').textContent,
    charts: document.querySelectorAll('svg polyline').length,
  }));
  await page.screenshot({ path: 'docs/status.png' });
  await browser.close();
  held.forEach((r) => r.destroy());
  const failures = [];
  if (external.length) failures.push('fetched from elsewhere: ' + external.join(' '));
  if (parseInt(figures.streams, 10) < 60) failures.push('streams figure: ' + figures.streams);
  if (!(parseFloat(figures.events) > 0)) failures.push('events out per second: ' + figures.events);
  if (!/ms|s/.test(figures.p99)) failures.push('no p99: ' + figures.p99);
  if (!/canary/.test(figures.variants) || !/stable/.test(figures.variants)) failures.push('variants: ' + figures.variants);
  if (!/script error/.test(figures.recent) || !/reload/.test(figures.recent)) failures.push('recent: ' + figures.recent);
  if (figures.charts < 7) failures.push('charts: ' + figures.charts);
  console.log('status page:', JSON.stringify(figures));
  if (failures.length) { console.log(failures.join('\n')); console.log('0 passed, 1 failed'); process.exit(1); }
  console.log('1 passed, 0 failed (screenshot: docs/status.png)');
})().catch((e) => { console.error(e); process.exit(1); });
