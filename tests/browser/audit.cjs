// Drives Debian's Chromium (headless, JavaScript disabled) through the pages given as JSON on
// argv[2]: {"base": URL, "out": DIR, "steps": [{"name": …, "path": …}]}. For each page it saves a
// screenshot at 1280 px and at 320 px, checks horizontal scrolling at 320 px, and runs axe-core
// (WCAG 2.1 A and AA). axe needs script, so it runs in a second, audit-only context on the very
// document the JS-free browser received (same URL, same CSS); the portal's pages run no script.
// Prints one JSON report on stdout.
const { chromium } = require('playwright-core');
const axe = require('axe-core');
const path = require('path');

(async () => {
  const spec = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({
    executablePath: process.env.IT_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const report = [];
  try {
    const user = await browser.newContext({ javaScriptEnabled: false, locale: 'fr-FR', viewport: { width: 1280, height: 900 } });
    const audit = await browser.newContext({ javaScriptEnabled: true, bypassCSP: true });
    const page = await user.newPage();
    const auditPage = await audit.newPage();
    for (const step of spec.steps) {
      const url = spec.base + step.path;
      const res = await page.goto(url, { waitUntil: 'load' });
      const html = await page.content();
      const entry = { name: step.name, url, status: res ? res.status() : 0, title: await page.title() };
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.screenshot({ path: path.join(spec.out, `${step.name}-1280.png`), fullPage: true });
      await page.setViewportSize({ width: 320, height: 640 });
      entry.scrollWidth320 = await page.evaluate(() => document.documentElement.scrollWidth);
      entry.clientWidth320 = await page.evaluate(() => document.documentElement.clientWidth);
      await page.screenshot({ path: path.join(spec.out, `${step.name}-320.png`), fullPage: true });
      entry.scripts = await page.evaluate(() => document.querySelectorAll('script').length);

      await auditPage.route(url, (route) => route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: html }));
      await auditPage.goto(url, { waitUntil: 'load' });
      await auditPage.unroute(url);
      await auditPage.evaluate((src) => { (0, eval)(src); }, axe.source);
      const result = await auditPage.evaluate(() => axe.run(document, {
        runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
      }));
      entry.violations = result.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')),
      }));
      report.push(entry);
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
})().catch((e) => { console.error(e); process.exit(1); });
