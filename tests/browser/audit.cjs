// Drives Debian's Chromium (headless, JavaScript disabled) through a journey given as JSON on
// argv[2]: {"base": URL, "out": DIR, "steps": [...]}. A step either opens a page
// ({"name", "path"}) or acts on the current one like a person would ({"name", "fill": {selector:
// text}, "check": [selector], "select": {selector: value}, "upload": {selector: file path}, "click": selector}, the click leading
// to the next page; "audit": false for a page that is not the portal's). On every page reached it saves a screenshot at 1280 px and at 320 px, checks
// horizontal scrolling at 320 px, the structure axe does not check (one h1, skip link, menu and site
// map, forms in error, self-refresh), focus visibility by keyboard, and runs axe-core (WCAG 2.1 A and AA). axe needs script, so it
// runs in a second, audit-only context on the very document the JS-free browser received (same
// URL, same CSS); the portal's pages run no script. Prints one JSON report on stdout: per page its
// status, URL, title, visible text and problems; a failing step names itself on stderr.
const { chromium } = require('playwright-core');
const axe = require('axe-core');
const path = require('path');

// What axe does not check, read from the page as the JS-free browser has it. Each problem starts
// with the rule's name.
function structure() {
  const problems = [];
  const h1 = document.querySelectorAll('h1').length;
  if (h1 !== 1) problems.push(`one-h1: ${h1} <h1> elements`);
  if (!document.documentElement.lang) problems.push('lang: <html> has no lang');
  const first = document.querySelector('a[href], button, input:not([type=hidden]), select, textarea');
  if (!first || first.getAttribute('href') !== '#contenu') problems.push('skip-link: the first link does not go to #contenu');
  if (!document.getElementById('contenu')) problems.push('skip-link: no #contenu');
  if (!document.querySelector('nav#menu a[href]')) problems.push('two-ways: no main menu');
  if (!document.querySelector('a[href="/plan-du-site"]')) problems.push('two-ways: no link to the site map');
  // Forms in error: the title says so first, a summary at the top links to every faulty field,
  // and every message is tied to its field.
  const summary = document.getElementById('erreurs');
  const messages = [...document.querySelectorAll('.fr-error-text, .fr-message--error')];
  if ((summary || messages.length) && !/^(Erreur|Error)\s*:/.test(document.title)) {
    problems.push(`title-error: a form in error but the title is "${document.title}"`);
  }
  if (messages.length && !summary) problems.push('error-summary: field errors but no summary (#erreurs)');
  for (const m of messages) {
    if (!m.id) { problems.push(`error-message: "${m.textContent.trim()}" has no id`); continue; }
    const field = [...document.querySelectorAll('[aria-describedby], [aria-labelledby]')].find((f) =>
      `${f.getAttribute('aria-describedby') || ''} ${f.getAttribute('aria-labelledby') || ''}`
        .split(/\s+/).includes(m.id));
    if (!field) { problems.push(`error-describedby: no field refers to #${m.id}`); continue; }
    if (!field.id || !(summary && summary.querySelector(`a[href="#${CSS.escape(field.id)}"]`))) {
      problems.push(`error-summary: no link to the field of #${m.id}`);
    }
  }
  for (const f of document.querySelectorAll('[aria-invalid=true]')) {
    const ids = (f.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean);
    if (!ids.some((id) => { const e = document.getElementById(id); return e && e.textContent.trim(); })) {
      problems.push(`error-describedby: #${f.id} is invalid without a message tied to it`);
    }
  }
  return problems;
}

// Tabs through the first elements like a keyboard user: each must show where the focus is.
async function focusProblems(page) {
  const problems = [];
  await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
  for (let i = 0; i < 12; i++) {
    await page.keyboard.press('Tab');
    const f = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      // The ring may be drawn by a pseudo-element: the DSFR's enlarged links (fr-enlarge-link)
      // put it on the link's ::before, which covers the whole block.
      const ring = [null, '::before', '::after'].some((pseudo) => {
        const st = getComputedStyle(e, pseudo);
        return (st.outlineStyle !== 'none' && parseFloat(st.outlineWidth) > 0) || st.boxShadow !== 'none';
      });
      return { ring, what: `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${(e.textContent || e.name || '').trim().slice(0, 30)}"` };
    });
    if (!f) break;
    if (!f.ring) problems.push(`focus-visible: no focus indicator on ${f.what}`);
  }
  return problems;
}

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
        if (step.path) {
          const target = /^https?:/.test(step.path) ? step.path : spec.base + step.path;
          res = await page.goto(target, { waitUntil: 'load' });
        }
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
      if (step.audit === false) { report.push(entry); continue; } // a page that is not the portal's
      entry.refresh = (res && res.headers()['refresh']) || await page.evaluate(
        () => (document.querySelector('meta[http-equiv="refresh" i]') || {}).content || null);
      entry.problems = await page.evaluate(structure);
      entry.problems.push(...await focusProblems(page));
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
