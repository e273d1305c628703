// Drives Debian's Chromium (headless, JavaScript disabled) through a journey given as JSON on
// argv[2]: {"base": URL, "out": DIR, "steps": [...]}. A step either opens a page
// ({"name", "path"}) or acts on the current one like a person would ({"name", "fill": {selector:
// text}, "check": [selector], "select": {selector: value}, "upload": {selector: file path}, "click": selector}, the click leading
// to the next page). On every page reached it saves a screenshot at 1280 px and at 320 px, checks
// horizontal scrolling at 320 px, and runs axe-core (WCAG 2.1 A and AA). axe needs script, so it
// runs in a second, audit-only context on the very document the JS-free browser received (same
// URL, same CSS); the portal's pages run no script. Prints one JSON report on stdout: per page its
// status, URL, title, visible text and problems; a failing step names itself on stderr.
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
      let res = null;
      try {
        if (step.path) res = await page.goto(spec.base + step.path, { waitUntil: 'load' });
        for (const [sel, value] of Object.entries(step.fill || {})) await page.fill(sel, value);
        for (const sel of step.check || []) await page.check(sel, { force: true });
        for (const [sel, value] of Object.entries(step.select || {})) await page.selectOption(sel, value);
        for (const [sel, file] of Object.entries(step.upload || {})) await page.setInputFiles(sel, file);
        if (step.click) {
          [res] = await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(step.click)]);
        }
      } catch (e) {
        throw new Error(`step "${step.name}" at ${page.url()}: ${e.message}`);
      }
      const url = page.url();
      const html = await page.content();
      const entry = { name: step.name, url, status: res ? res.status() : 0, title: await page.title() };
      entry.text = await page.evaluate(() => document.body.innerText);
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
