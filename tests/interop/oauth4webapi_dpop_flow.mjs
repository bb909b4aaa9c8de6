// oauth4webapi (v3) runs a DPoP-bound authorization code flow (RFC 9449) against a live
// codeflow, with refresh, and authenticates with private_key_jwt (RFC 7523 §2.2) when
// the config gives it a private key: every step is the library's own (DPoP handle with a
// generated ES256 key pair, PrivateKeyJwt), retried once when the server asks for a
// DPoP nonce (isDPoPNonceError: RFC 9449 §8, §9), as the library's documentation shows.
//
// Config (JSON on argv[2] or stdin):
//   {issuer, client_id, redirect_uri, username, password,
//    private_jwk (a private JWK with kid and alg, or null for a public client)}
// Prints one JSON line: {ok: true, ...} or {ok: false, error, ...} (exit status 1).

import { createRequire } from 'node:module'
import * as oauth from 'oauth4webapi'
import { describeError, readConfig, report, signInAndApprove } from './browser.mjs'

const { version } = createRequire(import.meta.url)('oauth4webapi/package.json')
const http = { [oauth.allowInsecureRequests]: true } // http://127.0.0.1 in a test

/** Call ``request`` once, and once more if the server asked for a DPoP nonce. */
async function withNonceRetry(request) {
  try {
    return await request()
  } catch (e) {
    if (!oauth.isDPoPNonceError(e)) throw e
    return await request()
  }
}

async function clientAuthOf(config) {
  if (!config.private_jwk) return [oauth.None(), 'none']
  const { kid, alg, ...jwk } = config.private_jwk
  const params = alg === 'ES256' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSA-PSS', hash: 'SHA-256' }
  const key = await crypto.subtle.importKey('jwk', jwk, params, false, ['sign'])
  return [oauth.PrivateKeyJwt({ key, kid }), 'private_key_jwt']
}

async function main() {
  const config = readConfig()
  const issuer = new URL(config.issuer)
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, http))
  const c = { client_id: config.client_id }
  const [clientAuth, method] = await clientAuthOf(config)
  const keyPair = await oauth.generateKeyPair('ES256', { extractable: true })
  const DPoP = oauth.DPoP(c, keyPair)
  const options = { ...http, DPoP }

  const codeVerifier = oauth.generateRandomCodeVerifier()
  const state = oauth.generateRandomState()
  const nonce = oauth.generateRandomNonce()
  const authorizationUrl = new URL(as.authorization_endpoint)
  for (const [k, v] of Object.entries({
    response_type: 'code',
    client_id: c.client_id,
    redirect_uri: config.redirect_uri,
    scope: 'openid profile offline_access',
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    // RFC 9449 §10: the code bound to the key (the library's own thumbprint of it).
    dpop_jkt: await DPoP.calculateThumbprint(),
  })) {
    authorizationUrl.searchParams.set(k, v)
  }
  const callbackUrl = await signInAndApprove(authorizationUrl, config)
  const params = oauth.validateAuthResponse(as, c, callbackUrl, state)

  const tokens = await withNonceRetry(async () =>
    oauth.processAuthorizationCodeResponse(as, c, await oauth.authorizationCodeGrantRequest(
      as, c, clientAuth, params, config.redirect_uri, codeVerifier, options,
    ), { expectedNonce: nonce, requireIdToken: true }),
  )
  const claims = oauth.getValidatedIdTokenClaims(tokens)
  const userinfo = await withNonceRetry(async () => oauth.processUserInfoResponse(
    as, c, claims.sub, await oauth.userInfoRequest(as, c, tokens.access_token, options),
  ))
  const refreshed = await withNonceRetry(async () => oauth.processRefreshTokenResponse(
    as, c, await oauth.refreshTokenGrantRequest(as, c, clientAuth, tokens.refresh_token, options),
  ))
  const userinfo2 = await withNonceRetry(async () => oauth.processUserInfoResponse(
    as, c, claims.sub, await oauth.userInfoRequest(as, c, refreshed.access_token, options),
  ))

  report({
    ok: true,
    library: `oauth4webapi@${version}`,
    client_auth: method,
    dpop_public_jwk: await crypto.subtle.exportKey('jwk', keyPair.publicKey),
    token_type: tokens.token_type,
    access_token: tokens.access_token,
    sub: claims.sub,
    userinfo_sub: userinfo.sub,
    refresh_token_type: refreshed.token_type,
    refreshed_access_token: refreshed.access_token,
    refresh_token_rotated: refreshed.refresh_token !== tokens.refresh_token,
    userinfo_after_refresh_sub: userinfo2.sub,
  })
}

main().catch((e) => report(describeError(e)))
