// The peer of `scripts/bench`: npm oidc-provider (panva, OpenID certified) as its documentation
// sets it up, keeping everything in memory (its default adapter), with one confidential client
// (client_secret_basic, PKCE required, RS256 ID tokens like the portal's bench client), and
// automatic login and consent: the interaction URL logs the one account in, and an existing
// grant is loaded for every authorization (the "skip consent" recipe).
// Usage: node peer.mjs PORT CLIENT_ID CLIENT_SECRET REDIRECT_URI MODULE_DIR
import http from 'node:http';
import crypto from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [port, clientId, clientSecret, redirectUri, moduleDir] = process.argv.slice(2);
const pkg = path.join(moduleDir, 'node_modules', 'oidc-provider');
const { default: Provider } = await import(pathToFileURL(path.join(pkg, 'lib', 'index.js')).href);

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench', use: 'sig', alg: 'RS256' };
const account = {
  sub: 'agent-bench',
  email: 'agent.bench@numerique.gouv.fr',
  email_verified: true,
  given_name: 'Agent',
  family_name: 'Bench',
};

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['given_name', 'family_name'],
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ ...account, sub }) }),
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const callback = provider.callback();
http.createServer(async (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    try {
      await provider.interactionFinished(req, res, { login: { accountId: account.sub } },
        { mergeWithLastSubmission: false });
    } catch (e) {
      res.writeHead(500).end(String(e));
    }
    return;
  }
  callback(req, res);
}).listen(Number(port), '127.0.0.1', () => console.error(`peer on ${issuer}`));
