// A state service built on a third-party relying-party library (npm openid-client, certified
// by the OpenID Foundation): discovery, an authorization request with PKCE, nonce and state, the
// agent's journey in Chromium with JavaScript disabled (login, consent), the code exchange with
// the ID token signature checked against the JWKS (non-repudiation checks on), then userinfo.
// Spec as JSON on argv[2]: {issuer, client_id, client_secret, port, identifier, password}.
// Prints {claims, userinfo, callback} on stdout.
const http = require('http');
const oc = require('openid-client');
const { chromium } = require('playwright-core');

(async () => {
  const spec = JSON.parse(process.argv[2]);
  const redirectUri = `http://127.0.0.1:${spec.port}/cb`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><html lang="fr"><title>Service</title><h1>Retour au service</h1></html>');
  });
  await new Promise((ok) => server.listen(spec.port, '127.0.0.1', ok));
  const browser = await chromium.launch({
    executablePath: process.env.IT_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  try {
    const config = await oc.discovery(new URL(spec.issuer), spec.client_id, spec.client_secret,
      undefined, { execute: [oc.allowInsecureRequests] });
    oc.enableNonRepudiationChecks(config);
    const verifier = oc.randomPKCECodeVerifier();
    const nonce = oc.randomNonce();
    const state = oc.randomState();
    const url = oc.buildAuthorizationUrl(config, {
      redirect_uri: redirectUri,
      scope: 'openid email profile tchap',
      code_challenge: await oc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      nonce,
      state,
    });
    const context = await browser.newContext({ javaScriptEnabled: false, locale: 'fr-FR' });
    const page = await context.newPage();
    await page.goto(url.href);
    await page.fill('input[name=identifier]', spec.identifier);
    await page.fill('input[name=password]', spec.password);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    await Promise.all([
      page.waitForURL((u) => u.href.startsWith(redirectUri)),
      page.click('button[value=approve]'),
    ]);
    const callback = page.url();
    const tokens = await oc.authorizationCodeGrant(config, new URL(callback), {
      pkceCodeVerifier: verifier,
      expectedNonce: nonce,
      expectedState: state,
      idTokenExpected: true,
    });
    const claims = tokens.claims();
    const userinfo = await oc.fetchUserInfo(config, tokens.access_token, claims.sub);
    process.stdout.write(JSON.stringify({ claims, userinfo, callback }));
  } finally {
    await browser.close();
    server.close();
  }
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  if (e && e.cause) console.error('cause:', e.cause);
  process.exit(1);
});
