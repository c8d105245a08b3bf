// The console in a real browser: headless Chromium (Debian's `chromium`) driven by
// playwright-core, against `tokenvault serve` and the test OAuth server on loopback.
//
// Run by tests/tests/console.rs, which starts both, makes the keys and links, and passes
// them in the JSON file named by TV_BROWSER_INPUT:
//   { serve, chromium, out, console_link, connect_link, tenant_key, login, password,
//     introspect: { url, client_id, client_secret }, oidc }
// Every page the browser saw is saved under `out` (the Rust side scans them for values
// that must never show); the last stdout line is a JSON summary.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const input = JSON.parse(readFileSync(process.env.TV_BROWSER_INPUT, 'utf8'));
mkdirSync(input.out, { recursive: true });

const browser = await chromium.launch({
  executablePath: input.chromium,
  // Root in a container has no user namespaces for Chromium's sandbox.
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let saved = 0;
const summary = { steps: [] };

// Every page load is kept for the canary scan, whoever served it.
async function newPage() {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('response', async (response) => {
    const type = response.headers()['content-type'] ?? '';
    if (!type.includes('html')) return;
    const body = await response.text().catch(() => '');
    saved += 1;
    writeFileSync(join(input.out, `page-${String(saved).padStart(3, '0')}.html`), `<!-- ${response.url()} -->\n${body}`);
  });
  return page;
}

const step = (name) => {
  summary.steps.push(name);
  process.stderr.write(`browser: ${name}\n`);
};

// At the provider: its own login page, filled in as a person would.
async function logInAtProvider(page) {
  await page.waitForSelector('input[name=login]');
  assert.match(page.url(), new RegExp(`^${input.introspect.url.replace(/\/token\/introspection$/, '')}/`));
  await page.fill('input[name=login]', input.login);
  await page.fill('input[name=password]', input.password);
  await Promise.all([page.waitForURL((url) => !url.pathname.startsWith('/interaction/')), page.click('button#sign-in')]);
}

async function introspect(token) {
  const { url, client_id: id, client_secret: secret } = input.introspect;
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token }),
  });
  return (await res.json()).active;
}

try {
  // --- The end user: console link, connect link, the provider's login, the badge. ---
  const user = await newPage();
  await user.goto(input.console_link);
  assert.equal(new URL(user.url()).pathname, '/console/me');
  await user.getByText('No connections yet.').waitFor();
  step('the console link lets the user in');

  await user.goto(input.connect_link);
  await logInAtProvider(user);
  assert.equal(new URL(user.url()).pathname, '/oauth/callback');
  await user.getByText('account is connected').waitFor();
  step('connected at the provider');

  await user.getByRole('link', { name: 'Your connections' }).click();
  const row = user.locator('tr[data-connection="idp/default"]');
  await row.waitFor();
  assert.equal(await row.locator('.badge').innerText(), 'Connected with API access');
  await user.screenshot({ path: join(input.out, 'user-connections.png'), fullPage: true });
  step('the connection shows with its badge');

  // An access token for the connection, made in the console and copied with its button.
  await user.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: input.serve });
  await user.fill('#token-name', 'laptop');
  await user.locator('input[name=connection]').first().check();
  await user.check('input[name=method][value=GET]');
  await user.fill('#token-paths', '/echo/*');
  await user.getByRole('button', { name: 'Make access token' }).click();
  const made = (await user.locator('#new-token').innerText()).trim();
  assert.match(made, /^tvp_/);
  await user.locator('button[data-copy="new-token"]').click();
  await user.getByRole('button', { name: 'Copied' }).waitFor();
  assert.equal(await user.evaluate(() => navigator.clipboard.readText()), made, 'the copy button copied the token');
  const curl = await user.locator('#new-token-curl').innerText();
  assert.ok(curl.includes(`Bearer ${made}`) && curl.includes(`${input.serve}/v1/proxy/idp/`), curl);
  await user.screenshot({ path: join(input.out, 'user-access-token.png'), fullPage: true });
  step('an access token, made and copied in the console');

  const through = (path) => fetch(`${input.serve}/v1/proxy/idp${path}`, { headers: { authorization: `Bearer ${made}` } });
  const proxied = await through('/echo/from-console');
  assert.equal(proxied.status, 200);
  assert.equal((await proxied.json()).path, '/echo/from-console');
  assert.equal((await through('/status/200')).status, 403, 'a path outside the token was reached');
  step('the token reaches the provider API through the proxy, within its paths');

  await user.locator('tr[data-access-token="laptop"]').getByRole('button', { name: 'Revoke' }).click();
  await user.getByText('Revoked access token').waitFor();
  assert.equal((await through('/echo/from-console')).status, 401, 'a revoked token still works');
  step('revoked in the console, the token is refused');

  // The backend reads a token, as it would to call the provider.
  const tokenRes = await fetch(`${input.serve}/v1/tenants/acme/users/alice/connections/idp/default/token`, {
    headers: { authorization: `Bearer ${input.tenant_key}` },
  });
  assert.equal(tokenRes.status, 200);
  const { access_token: access } = await tokenRes.json();
  assert.equal(await introspect(access), true, 'the token is active before disconnecting');
  summary.access_token = access;

  await row.getByRole('button', { name: 'Disconnect' }).click();
  await user.getByText('The provider revoked its tokens.').waitFor();
  await user.getByText('No connections yet.').waitFor();
  assert.equal(await introspect(access), false, 'the provider still accepts the token');
  step('disconnected: the provider says the token is revoked');

  // --- An administrator: sign in with an API key, revoke all of bob's connections. ---
  const admin = await newPage();
  await admin.goto(`${input.serve}/console`);
  assert.equal(new URL(admin.url()).pathname, '/console/sign-in');
  await admin.fill('#api_key', input.tenant_key);
  await admin.getByRole('button', { name: 'Sign in', exact: true }).click();
  await admin.getByRole('heading', { name: 'Users of acme' }).waitFor();
  const bob = admin.locator('tr[data-user="bob"]');
  assert.equal(await bob.locator('td').nth(1).innerText(), 'idp (2)');
  await admin.screenshot({ path: join(input.out, 'admin-users.png'), fullPage: true });
  step('the admin sees bob with his connections counted');

  await bob.getByRole('link', { name: 'bob' }).click();
  await admin.getByRole('heading', { name: 'User bob' }).waitFor();
  await admin.locator('tr[data-access-token="bob-ci"]').getByRole('button', { name: 'Revoke' }).click();
  await admin.getByText('Revoked access token bob-ci of bob.').waitFor();
  await admin.getByRole('link', { name: 'Back to bob' }).click();
  await admin.getByText('No access tokens.').waitFor();
  step("the admin revokes bob's access token");
  await admin.getByRole('link', { name: 'Revoke all…' }).click();
  await admin.getByText('This cannot be undone.').waitFor();
  await admin.getByRole('button', { name: 'Yes, revoke all' }).click();
  await admin.getByText('Revoked 2 connections of').waitFor();
  step('revoke all, confirmed');

  await admin.getByRole('link', { name: 'Back to the users' }).click();
  assert.equal(await admin.locator('tr[data-user="bob"]').count(), 0, 'bob is still listed');

  await admin.getByRole('link', { name: 'Audit log' }).click();
  await admin.selectOption('#action', 'revoke-all');
  await admin.getByRole('button', { name: 'Filter' }).click();
  await admin.locator('tr.event').first().waitFor();
  await admin.screenshot({ path: join(input.out, 'admin-audit.png'), fullPage: true });
  const actions = await admin.locator('tr.event td.action').allInnerTexts();
  assert.ok(actions.length >= 1 && actions.every((a) => a === 'revoke-all'), `filtered audit: ${actions}`);
  step('the audit log, filtered, shows the revocation');

  await admin.getByRole('button', { name: 'Sign out' }).click();
  await admin.goto(`${input.serve}/console/admin`);
  assert.equal(new URL(admin.url()).pathname, '/console/sign-in');
  step('signed out');

  // --- An administrator through the operator's OpenID Connect login. ---
  if (input.oidc) {
    const person = await newPage();
    await person.goto(`${input.serve}/console/sign-in`);
    await person.getByRole('button', { name: 'Sign in with your organization' }).click();
    await logInAtProvider(person);
    await person.getByRole('heading', { name: 'Users of acme' }).waitFor();
    step('signed in through OpenID Connect');
  }
} catch (err) {
  summary.error = String(err?.stack ?? err);
} finally {
  await browser.close();
}
summary.pages = saved;
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(summary.error ? 1 : 0);
