// oauth4webapi (v3, https://github.com/panva/oauth4webapi) runs an OpenID Connect
// authorization code flow with PKCE against a live codeflow, one low-level step at a time:
//   discoveryRequest/processDiscoveryResponse -> authorization URL (S256, state, nonce) ->
//   [browser: login, consent] -> validateAuthResponse (state, RFC 9207 iss) ->
//   authorizationCodeGrantRequest/processAuthorizationCodeResponse (ID token claims, nonce)
//   -> validateApplicationLevelSignature (the ID token's JWS against the jwks_uri keys) ->
//   userInfoRequest/processUserInfoResponse (sub must match) ->
//   refreshTokenGrantRequest/processRefreshTokenResponse.
//
// Config (JSON on argv[2] or stdin):
//   {issuer, client_id, client_secret (null for a public client), redirect_uri, username,
//    password, id_token_signed_response_alg (optional; RS256 when absent)}
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import * as oauth from 'oauth4webapi'
import { describeError, jwtHeader, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('oauth4webapi/package.json')

// The issuer is http://127.0.0.1:<port>: the library's documented switch for plain-HTTP
// endpoints, fine on loopback in a test.
const http = { [oauth.allowInsecureRequests]: true }

async function main() {
  const config = readConfig()
  const secret = config.client_secret ?? undefined
  const scope = 'openid profile email offline_access'

  const issuer = new URL(config.issuer)
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, http))
  const c = { client_id: config.client_id }
  if (config.id_token_signed_response_alg) {
    // The client's registered ID token alg (OIDC Core §3.1.3.7 step 7); RS256 otherwise.
    c.id_token_signed_response_alg = config.id_token_signed_response_alg
  }
  const clientAuth = secret === undefined ? oauth.None() : oauth.ClientSecretBasic(secret)

  const codeVerifier = oauth.generateRandomCodeVerifier()
  const state = oauth.generateRandomState()
  const nonce = oauth.generateRandomNonce()
  const authorizationUrl = new URL(as.authorization_endpoint)
  for (const [k, v] of Object.entries({
    response_type: 'code',
    client_id: c.client_id,
    redirect_uri: config.redirect_uri,
    scope,
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })) {
    authorizationUrl.searchParams.set(k, v)
  }

  const callbackUrl = await signInAndApprove(authorizationUrl, config)

  const params = oauth.validateAuthResponse(as, c, callbackUrl, state)
  const tokenResponse = await oauth.authorizationCodeGrantRequest(
    as, c, clientAuth, params, config.redirect_uri, codeVerifier, http,
  )
  const tokens = await oauth.processAuthorizationCodeResponse(as, c, tokenResponse, {
    expectedNonce: nonce,
    requireIdToken: true,
  })
  // processAuthorizationCodeResponse checks the ID token's claims; its signature it leaves
  // to this call (the library relies on TLS for the issuer otherwise, and there is no TLS
  // here: OIDC Core §3.1.3.7 step 6).
  await oauth.validateApplicationLevelSignature(as, tokenResponse, http)
  const claims = oauth.getValidatedIdTokenClaims(tokens)

  const userinfo = await oauth.processUserInfoResponse(
    as, c, claims.sub, await oauth.userInfoRequest(as, c, tokens.access_token, http),
  )

  let refreshed = null
  if (tokens.refresh_token) {
    const r = await oauth.processRefreshTokenResponse(
      as, c, await oauth.refreshTokenGrantRequest(as, c, clientAuth, tokens.refresh_token, http),
    )
    refreshed = {
      access_token_changed: r.access_token !== tokens.access_token,
      refresh_token_rotated: !!r.refresh_token && r.refresh_token !== tokens.refresh_token,
      token_type: r.token_type,
      expires_in: r.expires_in,
      id_token: !!r.id_token,
    }
    // The new access token works where the old one did.
    await oauth.processUserInfoResponse(
      as, c, claims.sub, await oauth.userInfoRequest(as, c, r.access_token, http),
    )
  }

  report({
    ok: true,
    library: `oauth4webapi@${version}`,
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
