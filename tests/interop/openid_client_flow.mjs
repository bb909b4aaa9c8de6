// openid-client (v6, https://github.com/panva/openid-client) runs an OpenID Connect
// authorization code flow with PKCE against a live codeflow:
//   discovery -> authorization URL (S256, state, nonce) -> [browser: login, consent] ->
//   authorizationCodeGrant (auth response incl. RFC 9207 iss, ID token claims and its
//   JWKS signature) -> fetchUserInfo (sub must match) -> refreshTokenGrant.
//
// Config (JSON on argv[2] or stdin):
//   {issuer, client_id, client_secret (null for a public client), redirect_uri, username,
//    password, id_token_signed_response_alg (optional; RS256 when absent)}
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import * as client from 'openid-client'
import { describeError, jwtHeader, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('openid-client/package.json')

async function main() {
  const config = readConfig()
  const secret = config.client_secret ?? undefined
  const scope = 'openid profile email offline_access'

  const metadata = { client_secret: secret }
  if (config.id_token_signed_response_alg) {
    // The client's registered ID token alg (OIDC Core §3.1.3.7 step 7); RS256 otherwise.
    metadata.id_token_signed_response_alg = config.id_token_signed_response_alg
  }

  const oidc = await client.discovery(
    new URL(config.issuer),
    config.client_id,
    metadata,
    secret === undefined ? client.None() : client.ClientSecretBasic(secret),
    {
      execute: [
        // The issuer is http://127.0.0.1:<port>: the library's documented switch for
        // plain-HTTP endpoints, fine on loopback in a test.
        client.allowInsecureRequests,
        // Without TLS the ID token's signature is what proves its issuer (OIDC Core
        // §3.1.3.7 step 6): have the library check it, and the userinfo's if signed,
        // against the jwks_uri keys.
        client.enableNonRepudiationChecks,
      ],
    },
  )

  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const authorizationUrl = client.buildAuthorizationUrl(oidc, {
    redirect_uri: config.redirect_uri,
    scope,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })

  const callbackUrl = await signInAndApprove(authorizationUrl, config)

  const tokens = await client.authorizationCodeGrant(oidc, callbackUrl, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  })
  const claims = tokens.claims()
  const userinfo = await client.fetchUserInfo(oidc, tokens.access_token, claims.sub)

  let refreshed = null
  if (tokens.refresh_token) {
    const r = await client.refreshTokenGrant(oidc, tokens.refresh_token)
    refreshed = {
      access_token_changed: r.access_token !== tokens.access_token,
      refresh_token_rotated: !!r.refresh_token && r.refresh_token !== tokens.refresh_token,
      token_type: r.token_type,
      expires_in: r.expires_in,
      id_token: !!r.id_token,
    }
    // The new access token works where the old one did.
    await client.fetchUserInfo(oidc, r.access_token, claims.sub)
  }

  report({
    ok: true,
    library: `openid-client@${version}`,
    client_auth: secret === undefined ? 'none' : 'client_secret_basic',
    callback_params: [...callbackUrl.searchParams.keys()].sort(),
    sub: claims.sub,
    id_token_header: jwtHeader(tokens.id_token),
    id_token_claims: claims,
    granted_scope: tokens.scope ?? null,
    token_type: tokens.token_type,
    userinfo,
    refreshed: refreshed !== null,
    refresh: refreshed,
  })
}

main().catch((e) => report(describeError(e)))
